// Command holddb keeps a Volant database open until its stdin closes. In
// bench/ipam it stands in for a running volantd: while another process has
// the database open, a volant-ipam run is not the last connection, so it
// neither rebuilds the WAL index when it opens nor checkpoints when it
// exits.
//
//	holddb DB < fifo
package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"

	"github.com/volantvm/volant/lib/store"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: holddb DB < fifo")
		os.Exit(2)
	}
	ctx := context.Background()
	st, err := store.Open(ctx, os.Args[1], store.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "holddb:", err)
		os.Exit(1)
	}
	// One read maps the WAL index; the idle connection keeps it.
	err = st.Read(ctx, func(tx *sql.Tx) error {
		var n int
		return tx.QueryRowContext(ctx, "SELECT count(*) FROM ip_leases").Scan(&n)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "holddb:", err)
		os.Exit(1)
	}
	fmt.Println("holding")
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := st.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "holddb:", err)
		os.Exit(1)
	}
}
