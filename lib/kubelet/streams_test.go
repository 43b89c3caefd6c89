package kubelet

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	vkapi "github.com/virtual-kubelet/virtual-kubelet/node/api"

	"github.com/volantvm/volant/lib/api"
)

// followStream is a workload's log as volantd streams it with follow: the
// test writes lines into it; it ends when its request's context does, as
// an HTTP response body does.
type followStream struct {
	*io.PipeReader
	closed chan struct{}
}

func (s followStream) Close() error {
	close(s.closed)
	return s.PipeReader.Close()
}

// TestLogsFollow: `kubectl logs -f` through the kubelet API's handler:
// lines the workload writes after the request started arrive each as it
// is written, not when the stream ends; when the caller goes, the stream
// from volantd is given up (its request's context ends, the stream is
// closed), so no follow outlives its kubectl.
func TestLogsFollow(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	pr, pw := io.Pipe()
	stream := followStream{pr, make(chan struct{})}
	asked := make(chan context.Context, 1)
	f.logStream = func(ctx context.Context) io.ReadCloser {
		asked <- ctx
		go func() {
			<-ctx.Done()
			pw.CloseWithError(ctx.Err())
		}()
		return stream
	}
	p, _ := newTestProvider(t, f)
	pod := testPod("web")
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	defer p.DeletePod(ctx, pod)
	eventually(t, p, "the VM", func() bool { _, err := p.vmOf("default", "web", ""); return err == nil })
	srv := httptest.NewServer(vkapi.PodHandler(vkapi.PodHandlerConfig{GetContainerLogs: p.GetContainerLogs}, false))
	defer srv.Close()

	// A bound for a test that would hang, not a measure.
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, srv.URL+"/containerLogs/default/web/web?follow=true&tailLines=2", nil)
	if err != nil {
		t.Fatal(err)
	}
	type answer struct {
		resp *http.Response
		err  error
	}
	answered := make(chan answer, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		answered <- answer{resp, err}
	}()
	var sctx context.Context
	select {
	case sctx = <-asked:
	case <-rctx.Done():
		t.Fatal("the request never asked volantd for the log")
	}
	f.mu.Lock()
	o := f.logOpts[0]
	f.mu.Unlock()
	if !o.Follow || o.Tail != 2 || o.Stream != api.LogWorkload {
		t.Fatalf("log options %+v", o)
	}
	write := func(line string) {
		go func() { _, _ = pw.Write([]byte(line)) }()
	}
	write("line 1\n")
	a := <-answered
	if a.err != nil {
		t.Fatal(a.err)
	}
	if a.resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTP %d", a.resp.StatusCode)
	}
	body := bufio.NewReader(a.resp.Body)
	for _, want := range []string{"line 1\n", "line 2\n", "line 3\n"} {
		if want != "line 1\n" {
			write(want) // once the line before has arrived
		}
		got, err := body.ReadString('\n')
		if err != nil || got != want {
			t.Fatalf("read %q, %v; want %q", got, err, want)
		}
	}

	// kubectl goes.
	a.resp.Body.Close()
	select {
	case <-sctx.Done():
	case <-rctx.Done():
		t.Fatal("the stream from volantd outlived the request")
	}
	select {
	case <-stream.closed:
	case <-rctx.Done():
		t.Fatal("the stream from volantd was not closed")
	}
}
