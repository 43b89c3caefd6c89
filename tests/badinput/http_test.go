package badinput

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/selfsigned"
	_ "github.com/volantvm/volant/lib/store" // the sqlite3 driver
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// httpCase is one line of http/volantd.jsonl (see the package comment).
type httpCase struct {
	Name        string `json:"name"`
	Method      string `json:"method"`
	Path        string `json:"path"`
	ContentType string `json:"content_type,omitempty"`
	Accept      string `json:"accept,omitempty"`
	Body        string `json:"body,omitempty"`
	// Auth is how the request carries the token: "" (the daemon's own,
	// an admin's, as it should), "none", "wrong", "query" (in the query
	// string, which is refused), "query+header" (both), "malformed"
	// (Authorization: Basic), "viewer", "operator" (named tokens of those
	// roles), "expired" (a viewer's, expired), "revoked" (an admin's,
	// revoked), "plain" (the daemon's token over plain HTTP to the TLS
	// port: a downgrade).
	Auth string `json:"auth,omitempty"`
	// BodyBytes pads the body with spaces to that many bytes;
	// HeaderBytes adds an X-Pad header of that many bytes.
	BodyBytes   int `json:"body_bytes,omitempty"`
	HeaderBytes int `json:"header_bytes,omitempty"`
	Status      int `json:"status"`
	// Code is the error object's code; "" only with ServerAnswers.
	Code apierr.Code `json:"code,omitempty"`
	// ServerAnswers: Go's HTTP server answers before volantd reads the
	// request (headers over the limit): plain text, no error object.
	ServerAnswers bool `json:"server_answers,omitempty"`
	// Files, Dirs, FIFOs and Links are made under $TMP before the request
	// and removed after it: artifacts a case points the daemon at.
	Files map[string]string `json:"files,omitempty"`
	Dirs  []string          `json:"dirs,omitempty"`
	FIFOs []string          `json:"fifos,omitempty"`
	Links map[string]string `json:"links,omitempty"` // name → target
	Issue string            `json:"issue,omitempty"`
}

// blob is what the corpus's HTTP server answers at $HTTP/blob.
const blob = "not a plugin image, served to be refused\n"

// TestHTTP sends each case to one real volantd (no network, no launcher,
// the API on a unix socket and on TCP with a token) that has one plugin
// installed. A case passes when the answer has the case's status, is a
// JSON error object with its code and a message, and nothing changed: the
// plugins, VMs, deployments and volumes the API lists, the event log's
// last ID, and every file and directory under the daemon's data dir.
func TestHTTP(t *testing.T) {
	cases := readCases[httpCase](t, "http/*.jsonl")
	d := startHTTPDaemon(t)
	// The server is on the daemon's loopback: its socket is made in the
	// namespace.
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/blob" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, blob)
	}))
	if err := d.ns.Do(func() error {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		srv.Listener = l
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv.Start()
	defer srv.Close()

	for _, lc := range cases {
		c := lc.Case
		t.Run(c.Name, func(t *testing.T) {
			where := fmt.Sprintf("%s:%d", lc.File, lc.Line)
			if c.Name == "" || (c.Code == "") != c.ServerAnswers || c.Method == "" || c.Path == "" || c.Status == 0 {
				t.Fatalf("%s: a case needs a name, method, path, status and code (no code when the server answers)", where)
			}
			tally.cases.Add(1)
			sub := func(s string) string {
				return strings.NewReplacer("$TMP", d.dir, "$HTTP", srv.URL).Replace(s)
			}
			var made []string
			defer func() {
				for i := len(made) - 1; i >= 0; i-- {
					os.Remove(made[i])
				}
			}()
			for _, p := range c.Dirs {
				p = filepath.Join(d.dir, p)
				if err := os.Mkdir(p, 0o755); err != nil {
					t.Fatal(err)
				}
				made = append(made, p)
			}
			for name, content := range c.Files {
				p := filepath.Join(d.dir, name)
				if err := os.WriteFile(p, []byte(sub(content)), 0o644); err != nil {
					t.Fatal(err)
				}
				made = append(made, p)
			}
			for _, name := range c.FIFOs {
				p := filepath.Join(d.dir, name)
				if err := syscall.Mkfifo(p, 0o644); err != nil {
					t.Fatal(err)
				}
				made = append(made, p)
			}
			for name, target := range c.Links {
				p := filepath.Join(d.dir, name)
				if err := os.Symlink(sub(target), p); err != nil {
					t.Fatal(err)
				}
				made = append(made, p)
			}
			before := d.state(t)
			lastEvent := d.lastEvent(t, "1 = 1")
			reqBody := sub(c.Body)
			if n := c.BodyBytes - len(reqBody); n > 0 {
				reqBody += strings.Repeat(" ", n)
			}
			var extra []string
			if c.HeaderBytes > 0 {
				extra = []string{"X-Pad", strings.Repeat("a", c.HeaderBytes)}
			}
			status, ctype, body := d.do(t, c.Method, sub(c.Path), c.ContentType, c.Accept, reqBody, c.Auth, extra...)
			var problems []string
			if status != c.Status {
				problems = append(problems, fmt.Sprintf("status %d, want %d", status, c.Status))
			}
			var e apierr.Error
			switch {
			case c.ServerAnswers:
				if !strings.HasPrefix(ctype, "text/plain") {
					problems = append(problems, fmt.Sprintf("Content-Type %q, want Go's text/plain", ctype))
				}
			case !strings.HasPrefix(ctype, "application/json"):
				problems = append(problems, fmt.Sprintf("Content-Type %q", ctype))
			}
			if err := json.Unmarshal(body, &e); !c.ServerAnswers && (err != nil || e.Code != c.Code || e.Message == "") {
				problems = append(problems, fmt.Sprintf("not a %s error object: %s", c.Code, body))
			}
			if after := d.state(t); after != before {
				problems = append(problems, "the request changed state:\nbefore:\n"+before+"\nafter:\n"+after)
			}
			// The audit trail: nothing recorded as done; a refusal to a
			// named token recorded under its name (written before the
			// answer; other refusals may be recorded just after it).
			audits := d.audits(t, lastEvent)
			for _, a := range audits {
				if f := strings.Fields(a); len(f) < 3 || f[1] < "400" {
					problems = append(problems, "audited as done: "+a)
				}
			}
			if (c.Auth == "viewer" || c.Auth == "operator") && c.Status == 403 {
				if want := c.Auth + " 403 PERMISSION_DENIED"; c.Method != "GET" && (len(audits) != 1 || audits[0] != want) {
					problems = append(problems, fmt.Sprintf("audit trail %q, want [%s]", audits, want))
				}
			}
			if len(problems) > 0 {
				t.Fatalf("%s: %s %s:\n%s", where, c.Method, c.Path, strings.Join(problems, "\n"))
			}
			tally.clear.Add(1)
		})
	}
}

type httpDaemon struct {
	dir, sock, addr, token string
	ns                     *netnstest.NS
	sqldb                  *sql.DB
	secrets                map[string]string // named tokens by name
	pid                    int               // volantd's
	roots                  *x509.CertPool    // trusts its certificate
	client                 *http.Client      // over the unix socket
	tcp                    *http.Client      // to addr, inside ns
}

// startHTTPDaemon runs volantd in a scratch directory and a network
// namespace of its own (no bridge, no agent endpoint) and installs the
// plugin "web" from an artifact in its plugins directory.
func startHTTPDaemon(t *testing.T) *httpDaemon {
	t.Helper()
	netnstest.Require(t, "nft")
	bin := guesttest.Command(t, "volantd")
	launcher := guesttest.Command(t, "volant-launch")
	dir := t.TempDir()
	d := &httpDaemon{dir: dir, sock: filepath.Join(dir, "v.sock"), token: "5f0c2e8a9b71d4636e02a1f9c8b3d7e4", ns: netnstest.New(t)}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(d.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "volantd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	pair, err := selfsigned.New([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pair.Cert, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pair.Key, 0o600); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pair.Cert)
	x := d.ns.Cmd(bin, "--socket", d.sock, "--data-dir", filepath.Join(dir, "data"), "--run-root", filepath.Join(dir, "run"),
		"--no-network-setup", "--agent-listen", "off", "--launcher", launcher,
		"--listen", "127.0.0.1:0", "--tls-cert", certFile, "--tls-key", keyFile, "--token-file", tokenFile)
	x.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "TMPDIR=" + dir}
	x.Stdout, x.Stderr = logf, logf
	if err := x.Start(); err != nil {
		t.Fatal(err)
	}
	d.pid, d.roots = x.Process.Pid, roots
	done := make(chan struct{})
	go func() { x.Wait(); close(done) }()
	t.Cleanup(func() {
		x.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			x.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for d.addr == "" {
		select {
		case <-done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("volantd exited:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("volantd does not serve TCP after 60 s:\n%s", b)
		}
		if f, err := os.Open(logPath); err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				if l := sc.Text(); strings.Contains(l, "serving the API") && strings.Contains(l, "network=tcp") {
					for _, kv := range strings.Fields(l) {
						if a, ok := strings.CutPrefix(kv, "addr="); ok {
							d.addr = a
						}
					}
				}
			}
			f.Close()
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.client = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", d.sock)
		}}}
	// The daemon's loopback is the namespace's: the socket is made there.
	d.tcp = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = d.ns.Do(func() error {
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		}}}

	d.sqldb, err = sql.Open("sqlite3", "file:"+filepath.Join(dir, "data", "volant.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.sqldb.Close() })

	// The one plugin every case must leave as it is.
	art := filepath.Join(dir, "data", "plugins", "web.img")
	if err := os.MkdirAll(filepath.Dir(art), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(art, []byte("a web plugin's image\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("a web plugin's image\n"))
	m := fmt.Sprintf(`{"name":"web","version":"1.0.0","initramfs":{"url":%q,"checksum":"sha256:%s"},"workload":{"entrypoint":["/bin/web"]}}`,
		art, hex.EncodeToString(sum[:]))
	if st, _, body := d.do(t, "POST", "/api/v1/plugins", "application/json", "", m, ""); st != 201 {
		t.Fatalf("installing the plugin web: %d %s", st, body)
	}

	// Named tokens, made by root on the unix socket: one of each kind a
	// case may name.
	d.secrets = map[string]string{}
	for _, tk := range []struct{ name, role, expires string }{
		{"viewer", "viewer", ""}, {"operator", "operator", ""}, {"expired", "viewer", "1ms"}, {"revoked", "admin", ""},
	} {
		resp, err := d.client.Post("http://volantd/api/v1/tokens", "application/json",
			strings.NewReader(fmt.Sprintf(`{"name":%q,"role":%q,"expires_in":%q}`, tk.name, tk.role, tk.expires)))
		if err != nil {
			t.Fatal(err)
		}
		var created struct{ Secret string }
		err = json.NewDecoder(resp.Body).Decode(&created)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 201 || created.Secret == "" {
			t.Fatalf("creating the token %s: %d %v", tk.name, resp.StatusCode, err)
		}
		d.secrets[tk.name] = created.Secret
	}
	req, _ := http.NewRequest("DELETE", "http://volantd/api/v1/tokens/revoked", nil)
	if resp, err := d.client.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("revoking a token: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if st, _, _ := d.do(t, "GET", "/api/v1/vms", "", "", "", "expired"); st == 401 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the token that expires after 1 ms still works")
		}
	}
	return d
}

// do sends one request: over TCP when auth says how to carry the token
// wrongly, otherwise over TCP with the token as it should be.
// Extra header names and values follow auth.
func (d *httpDaemon) do(t *testing.T, method, path, ctype, accept, body, auth string, extra ...string) (int, string, []byte) {
	t.Helper()
	url := "https://" + d.addr + path
	if auth == "plain" {
		url = "http://" + d.addr + path
	}
	if auth == "query" || auth == "query+header" {
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		url += sep + "token=" + d.token
	}
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	switch auth {
	case "", "query+header", "plain":
		req.Header.Set("Authorization", "Bearer "+d.token)
	case "wrong":
		req.Header.Set("Authorization", "Bearer "+strings.Repeat("0", len(d.token)))
	case "malformed":
		req.Header.Set("Authorization", "Basic "+d.token)
	case "none", "query":
	default:
		s, ok := d.secrets[auth]
		if !ok {
			t.Fatalf("auth %q: no such kind", auth)
		}
		req.Header.Set("Authorization", "Bearer "+s)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	for i := 0; i+1 < len(extra); i += 2 {
		req.Header.Set(extra[i], extra[i+1])
	}
	resp, err := d.tcp.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), b
}

// db is the daemon's database, open read-only.
func (d *httpDaemon) db(t *testing.T) *sql.DB { return d.sqldb }

// lastEvent is the id of the newest event where cond holds (0: none).
func (d *httpDaemon) lastEvent(t *testing.T, cond string) int64 {
	t.Helper()
	var id int64
	if err := d.db(t).QueryRow("SELECT coalesce(max(id), 0) FROM events WHERE " + cond).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// audits returns the audit events after id as "principal status code".
func (d *httpDaemon) audits(t *testing.T, after int64) []string {
	t.Helper()
	rows, err := d.db(t).Query("SELECT json_extract(data, '$.principal') || ' ' || json_extract(data, '$.status') || ' ' || "+
		"coalesce(json_extract(data, '$.code'), '') FROM events WHERE type = 'audit' AND id > ? ORDER BY id", after)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// state describes what a request could change: what the API lists (over
// the unix socket), the last event's ID, and every file and directory
// under the data directory but the database's own files.
func (d *httpDaemon) state(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, p := range []string{"/healthz", "/api/v1/plugins", "/api/v1/vms", "/api/v1/deployments", "/api/v1/volumes"} {
		resp, err := d.client.Get("http://volantd" + p)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if p == "/healthz" {
			// The audit trail records refused calls too (checked apart, by
			// audits): the last event that is not an audit counts.
			body = []byte(fmt.Sprint(d.lastEvent(t, "type != 'audit'")))
		}
		fmt.Fprintf(&b, "%s %d %s\n", p, resp.StatusCode, bytes.TrimSpace(body))
	}
	data := filepath.Join(d.dir, "data")
	err := filepath.WalkDir(data, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(data, p)
		if strings.HasPrefix(rel, "volant.db") {
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if rel == filepath.Join("plugins", ".partial") {
			return nil // where downloads happen, made by the first; its files count
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %s %d\n", rel, info.Mode(), info.Size())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
