// Command inproc measures leases the way volantd takes them: in its own
// process, through lib/store (WAL, synchronous=FULL: every committed lease
// is on disk) and lib/ipam, from many goroutines at once, as concurrent
// VM creates do. Each round leases N VM names from the pool, checks from a
// second connection that all N leases are committed, then releases them.
// It prints one JSON object: per concurrency level, the lease and release
// rates of every round.
//
//	inproc DB N ROUNDS CONCURRENCY...
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/ipam"
	"github.com/volantvm/volant/lib/store"
)

type level struct {
	Concurrency   int       `json:"concurrency"`
	LeasesPerS    []float64 `json:"leases_per_s"`
	ReleasesPerS  []float64 `json:"releases_per_s"`
	CommitsPerRun []uint64  `json:"commits_per_lease_phase"`
}

func main() {
	if len(os.Args) < 5 {
		fmt.Fprintln(os.Stderr, "usage: inproc DB N ROUNDS CONCURRENCY...")
		os.Exit(2)
	}
	n, _ := strconv.Atoi(os.Args[2])
	rounds, _ := strconv.Atoi(os.Args[3])
	ctx := context.Background()
	st, err := store.Open(ctx, os.Args[1], store.Options{})
	if err != nil {
		fail(err)
	}
	defer st.Close()
	pool, err := ipam.PoolFromEnv(os.Getenv).Pool()
	if err != nil {
		fail(err)
	}
	var out []level
	for _, a := range os.Args[4:] {
		c, err := strconv.Atoi(a)
		if err != nil || c < 1 {
			fail(fmt.Errorf("concurrency %q", a))
		}
		l := level{Concurrency: c}
		for r := 0; r < rounds; r++ {
			g0 := st.Generation()
			d, err := each(n, c, func(i int) error {
				_, err := ipam.Acquire(ctx, st, pool, fmt.Sprintf("vm-%d", i))
				return err
			})
			if err != nil {
				fail(err)
			}
			l.CommitsPerRun = append(l.CommitsPerRun, st.Generation()-g0)
			if err := committed(ctx, os.Args[1], n); err != nil {
				fail(err)
			}
			l.LeasesPerS = append(l.LeasesPerS, float64(n)/d.Seconds())
			d, err = each(n, c, func(i int) error {
				_, err := ipam.Release(ctx, st, fmt.Sprintf("vm-%d", i))
				return err
			})
			if err != nil {
				fail(err)
			}
			l.ReleasesPerS = append(l.ReleasesPerS, float64(n)/d.Seconds())
		}
		out = append(out, l)
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

// each runs fn(0..n-1) on c goroutines and returns the elapsed time.
func each(n, c int, fn func(int) error) (time.Duration, error) {
	work := make(chan int)
	errs := make(chan error, c)
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := fn(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	d := time.Since(t0)
	select {
	case err := <-errs:
		return d, err
	default:
	}
	return d, nil
}

// committed checks through a connection of its own that n leases are in
// the database: each lease returned only once it was committed.
func committed(ctx context.Context, path string, n int) error {
	st, err := store.Open(ctx, path, store.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	ls, err := ipam.List(ctx, st)
	if err != nil {
		return err
	}
	if len(ls) != n {
		return fmt.Errorf("%d leases committed, want %d", len(ls), n)
	}
	return nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "inproc:", err)
	os.Exit(1)
}
