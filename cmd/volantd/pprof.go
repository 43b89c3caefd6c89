//go:build pprof

package main

// Built with -tags pprof (never by make build), volantd serves
// net/http/pprof on the unix socket $VOLANTD_PPROF, for profiling the
// daemon where it runs, e.g. in bench/volantd-scale:
//
//	go build -tags "containers_image_openpgp libsqlite3 pprof" -o DIR/volantd ./cmd/volantd
//	VOLANTD_PPROF=/tmp/volantd.pprof.sock volantd …
//	go tool pprof 'http+unix:…' or curl --unix-socket /tmp/volantd.pprof.sock localhost/debug/pprof/profile?seconds=20 >cpu.prof

import (
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
)

func init() {
	p := os.Getenv("VOLANTD_PPROF")
	if p == "" {
		return
	}
	os.Remove(p)
	l, err := net.Listen("unix", p)
	if err != nil {
		return
	}
	go http.Serve(l, http.DefaultServeMux)
}
