package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli/clitest"
)

const examples = "../../lib/manifest/testdata/examples/"

func read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(examples + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestContract(t *testing.T) {
	nginx := read(t, "nginx-rootfs.json")
	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		code  int
	}{
		{"validate-file", "", []string{"validate", examples + "caddy-initramfs.json"}, 0},
		{"validate-stdin", nginx, []string{"validate"}, 0},
		{"validate-invalid", `{"name":"Bad Name","workload":{}}`, []string{"validate"}, 3},
		{"validate-secrets", "", []string{"validate", examples + "worker-exec.json"}, 0},
		{"validate-secret-value", `{"name":"a","version":"1","initramfs":{"url":"/a"},"workload":{"entrypoint":["/a"],"env":{"TOKEN":"x"}},"secrets":{"env":["TOKEN"],"files":["tls.key"]}}`, []string{"validate"}, 3},
		{"encode", nginx, []string{"encode"}, 0},
		{"encode-raw", nginx, []string{"encode", "--raw"}, 0},
		{"cmdline", nginx, []string{"cmdline"}, 0},
		{"cmdline-small-budget", nginx, []string{"cmdline", "--budget", "100"}, 3},
		{"decode-bad", "", []string{"decode", "!!notbase64"}, 3},
		{"missing-file", "", []string{"validate", "/nonexistent/m.json"}, 4},
		{"no-input", "", []string{"encode"}, 2},
		{"no-verb", "", nil, 2},
		{"validate-extra-argument", "", []string{"validate", examples + "caddy-initramfs.json", "garbage.bin"}, 2},
		{"repeated-flag", nginx, []string{"cmdline", "--budget", "100", "--budget", "2000"}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := clitest.Run(t, run, tc.stdin, nil, tc.args...)
			if r.Code != tc.code {
				t.Fatalf("exit %d, want %d; stderr %s", r.Code, tc.code, r.Stderr)
			}
			if tc.code == 0 {
				if r.Stderr != "" {
					t.Fatalf("stderr must be empty on success: %s", r.Stderr)
				}
				clitest.Golden(t, tc.name, r.Stdout)
				return
			}
			if r.Stdout != "" {
				t.Fatalf("stdout must be empty on failure: %s", r.Stdout)
			}
			var e apierr.Error
			if err := json.Unmarshal([]byte(r.Stderr), &e); err != nil {
				t.Fatalf("stderr is not an error object: %q", r.Stderr)
			}
			clitest.Golden(t, tc.name+".err", r.Stderr)
		})
	}
}

// encode | decode | cmdline composes, and the pipeline ends where it began.
func TestPipeline(t *testing.T) {
	for _, f := range []string{"nginx-rootfs.json", "caddy-initramfs.json", "worker-exec.json", "api-actions.json", "nginx-initramfs.json"} {
		src := read(t, f)
		enc := clitest.Run(t, run, src, nil, "encode", "--raw")
		if enc.Code != 0 {
			t.Fatalf("%s encode: %s", f, enc.Stderr)
		}
		dec := clitest.Run(t, run, enc.Stdout, nil, "decode")
		if dec.Code != 0 {
			t.Fatalf("%s decode: %s", f, dec.Stderr)
		}
		val := clitest.Run(t, run, dec.Stdout, nil, "validate")
		direct := clitest.Run(t, run, src, nil, "validate")
		if val.Stdout != direct.Stdout || val.Code != 0 {
			t.Fatalf("%s: decoded manifest differs from the source:\n%s\n%s", f, val.Stdout, direct.Stdout)
		}
		raw := clitest.Run(t, run, "", nil, "decode", "--raw", strings.TrimSpace(enc.Stdout))
		again := clitest.Run(t, run, raw.Stdout, nil, "encode", "--raw")
		if again.Stdout != enc.Stdout {
			t.Fatalf("%s: decode --raw | encode is not the identity", f)
		}
	}
}

func TestSchemaIsTheGeneratedDocument(t *testing.T) {
	r := clitest.Run(t, run, "", nil, "schema")
	if r.Code != 0 {
		t.Fatal(r.Stderr)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(r.Stdout), &doc); err != nil {
		t.Fatal(err)
	}
	// docs/plugin-manifest.schema.json is checked in for readers; it must be current.
	onDisk, err := os.ReadFile(filepath.Join("..", "..", "docs", "plugin-manifest.schema.json"))
	if err != nil {
		t.Fatalf("docs copy of the schema: %v (regenerate: go run ./cmd/volant-manifest schema > docs/plugin-manifest.schema.json)", err)
	}
	if string(onDisk) != r.Stdout {
		t.Fatal("docs/plugin-manifest.schema.json is stale; regenerate: go run ./cmd/volant-manifest schema > docs/plugin-manifest.schema.json")
	}
}
