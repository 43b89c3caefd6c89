// Command static is bench/volantd-scale's comparison: the least a Go HTTP
// server can do to answer GET /api/v1/vms. It serves one file's bytes (the
// answer volantd gave for the same VMs) to every request that carries the
// bearer token, with net/http as volantd does, and nothing else: no
// database, no encoding, no routing table.
//
//	static ADDR BODY_FILE TOKEN
package main

import (
	"crypto/subtle"
	"fmt"
	"net/http"
	"os"
	"strconv"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: static ADDR BODY_FILE TOKEN")
		os.Exit(2)
	}
	body, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "static:", err)
		os.Exit(1)
	}
	want := []byte("Bearer " + os.Args[3])
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	})
	fmt.Fprintln(os.Stderr, "static: serving", len(body), "bytes on", os.Args[1])
	if err := http.ListenAndServe(os.Args[1], h); err != nil {
		fmt.Fprintln(os.Stderr, "static:", err)
		os.Exit(1)
	}
}
