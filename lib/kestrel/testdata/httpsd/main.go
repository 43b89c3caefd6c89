// httpsd is TestVMHTTPSWorkload's workload: Go's own HTTPS server on
// 127.0.0.1:8443 (HTTP/2 and HTTP/1.1 offered, as Go offers them), with
// the certificate and key at /etc/httpsd/{cert,key}.pem. It logs every
// request with the protocol its client spoke, and says it in the answer,
// so the test can tell what kestrel's https clients negotiated.
package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Printf("httpsd: %s %s %s\n", r.Method, r.URL.Path, r.Proto)
		fmt.Fprintf(w, "%s over TLS\n", r.Proto)
	})
	err := http.ListenAndServeTLS("127.0.0.1:8443", "/etc/httpsd/cert.pem", "/etc/httpsd/key.pem", nil)
	fmt.Fprintln(os.Stderr, "httpsd:", err)
	os.Exit(1)
}
