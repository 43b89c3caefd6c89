package volar

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
)

// TestParseSecrets: values come from files and stdin, never from the
// command line; files keep their bytes and become 0600 in the guest.
func TestParseSecrets(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	os.WriteFile(tok, []byte("s3cr3t\n"), 0o600)
	cert := filepath.Join(dir, "tls.key")
	os.WriteFile(cert, []byte("-----BEGIN KEY-----\n\x00\xff\n"), 0o600)
	in, err := ParseSecrets([]string{"TOKEN=@" + tok, "DB_PASSWORD=-"}, []string{"/etc/app/tls.key=" + cert}, strings.NewReader("from stdin\n"))
	if err != nil {
		t.Fatal(err)
	}
	if in.Env["TOKEN"] != "s3cr3t" || in.Env["DB_PASSWORD"] != "from stdin" || len(in.Env) != 2 {
		t.Fatalf("env %q", in.Env)
	}
	if len(in.Files) != 1 || in.Files[0].Path != "/etc/app/tls.key" || in.Files[0].Mode != 0o600 || string(in.Files[0].Data) != "-----BEGIN KEY-----\n\x00\xff\n" {
		t.Fatalf("files %+v", in.Files)
	}
	if in, err := ParseSecrets(nil, nil, nil); in != nil || err != nil {
		t.Fatalf("no secrets: %+v %v", in, err)
	}
	for _, tc := range []struct {
		env, files []string
		code       apierr.Code
		want       string
	}{
		{[]string{"TOKEN=s3cr3t"}, nil, apierr.Usage, "shell's history"},
		{[]string{"=@" + tok}, nil, apierr.Usage, "NAME=@FILE"},
		{[]string{"A=-", "B=-"}, nil, apierr.Usage, "stdin is read once"},
		{[]string{"A=@" + dir + "/missing"}, nil, apierr.NotFound, "reading secret A"},
		{nil, []string{"relative/path=" + cert}, apierr.Usage, "/GUEST/PATH=LOCALFILE"},
		{nil, []string{"/etc/x=" + dir + "/missing"}, apierr.NotFound, "reading secret file"},
	} {
		_, err := ParseSecrets(tc.env, tc.files, strings.NewReader("x"))
		if !apierr.Is(err, tc.code) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v %v: %v, want %s with %q", tc.env, tc.files, err, tc.code, tc.want)
		}
		// The refused value is not echoed back.
		if err != nil && strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("the error repeats the secret: %v", err)
		}
	}
}
