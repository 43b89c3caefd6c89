package manifest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/bootargs"
)

// ManifestExamples returns testdata/examples/*.json by file name (exported for the
// external test package: schema_test.go).
func ManifestExamples(t testing.TB) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob("testdata/examples/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = b
	}
	return out
}

func TestExamplesRoundTrip(t *testing.T) {
	for name, data := range ManifestExamples(t) {
		t.Run(name, func(t *testing.T) {
			m, err := Parse(data)
			if err != nil {
				t.Fatalf("example does not parse: %v", err)
			}
			enc, err := m.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if strings.ContainsAny(enc, "+/= ") {
				t.Fatalf("encoding is not unpadded base64url: %q", enc)
			}
			back, err := DecodeString(enc)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(m, back) {
				t.Fatalf("round trip changed the manifest:\n got %+v\nwant %+v", back, m)
			}
			again, _ := back.Encode()
			if again != enc {
				t.Fatal("encoding is not deterministic")
			}
			// Normalizing twice changes nothing.
			j1, _ := m.JSON()
			m.Normalize()
			j2, _ := m.JSON()
			if !bytes.Equal(j1, j2) {
				t.Fatalf("Normalize is not idempotent:\n%s\n%s", j1, j2)
			}
		})
	}
}

func TestInvalidCorpus(t *testing.T) {
	files, _ := filepath.Glob("testdata/invalid/*.json")
	if len(files) < 10 {
		t.Fatalf("corpus too small: %d", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, _ := os.ReadFile(f)
			wantB, err := os.ReadFile(strings.TrimSuffix(f, ".json") + ".want")
			if err != nil {
				t.Fatalf("missing .want: %v", err)
			}
			want := strings.Split(strings.TrimSpace(string(wantB)), "\n")
			_, err = Parse(data)
			if !apierr.Is(err, apierr.InvalidManifest) {
				t.Fatalf("err = %v, want INVALID_MANIFEST", err)
			}
			var got []string
			for _, p := range Problems(err) {
				got = append(got, p.String())
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("problems:\n got %q\nwant %q", got, want)
			}
		})
	}
}

func TestNormalizeDefaults(t *testing.T) {
	m, err := Parse([]byte(`{"name":"app","version":"1","rootfs":{"url":"/r.img","format":"xfs","checksum":"` +
		strings.Repeat("AB", 32) + `"},"workload":{"entrypoint":["/app"],"base_url":"http://127.0.0.1:8080"},"health_check":{},"actions":{"go":{"path":"/go"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if m.SchemaVersion != "1.0" || m.Runtime != "app" || !m.IsEnabled() {
		t.Errorf("top-level defaults: %+v", m)
	}
	if m.Rootfs.Format != "raw" || m.Rootfs.FSType != "xfs" || m.Rootfs.Checksum != "sha256:"+strings.Repeat("ab", 32) {
		t.Errorf("rootfs: %+v", m.Rootfs)
	}
	if m.Workload.Type != "http" || m.Workload.Restart != "on-failure" || m.Workload.Workdir != "/" {
		t.Errorf("workload: %+v", m.Workload)
	}
	if *m.HealthCheck != (HealthCheck{Endpoint: "/", IntervalMS: 5000, TimeoutMS: 2000, Retries: 3}) {
		t.Errorf("health: %+v", m.HealthCheck)
	}
	if m.Actions["go"].Method != "POST" || m.Actions["go"].TimeoutMS != 30000 {
		t.Errorf("actions: %+v", m.Actions)
	}
	if m.Resources != (Resources{CPUCores: 1, MemoryMB: 128}) || m.Network.Mode != "bridged" {
		t.Errorf("resources/network: %+v %+v", m.Resources, m.Network)
	}
	// This workload is on 8080, so kestrel's API moves out of its way.
	if m.AgentPort() != 8081 {
		t.Errorf("agent port next to an 8080 workload: %d", m.AgentPort())
	}
	if a, _ := m.BootArgs(); a.AgentPort != 8081 {
		t.Errorf("boot args must carry a non-default agent port: %+v", a)
	}
	w, err := Parse([]byte(`{"name":"app","version":"1","initramfs":{"url":"/i"},"workload":{"entrypoint":["/app"],"base_url":"http://127.0.0.1"}}`))
	if err != nil || w.AgentPort() != 8080 {
		t.Errorf("default agent port: %v %v", w.AgentPort(), err)
	}
	if a, _ := w.BootArgs(); a.AgentPort != 0 {
		t.Errorf("the default agent port stays off the command line: %+v", a)
	}
	off := false
	m.Enabled = &off
	if m.IsEnabled() {
		t.Error("enabled=false lost")
	}
}

func TestBootArgs(t *testing.T) {
	m, err := Parse(ManifestExamples(t)["nginx-rootfs.json"])
	if err != nil {
		t.Fatal(err)
	}
	line, err := m.Cmdline(DefaultFragmentBudget)
	if err != nil {
		t.Fatal(err)
	}
	a, err := bootargs.Parse(line)
	if err != nil {
		t.Fatal(err)
	}
	if a.Plugin != "nginx" || a.Boot != bootargs.BootRootfs || a.RootfsFSType != "ext4" {
		t.Fatalf("args %+v", a)
	}
	back, err := DecodeString(a.Manifest)
	if err != nil || !reflect.DeepEqual(back, m) {
		t.Fatalf("manifest from the line differs: %v", err)
	}
}

// A 3 KB manifest whose text does not compress (random hex) cannot fit.
func TestCmdlineTooLong(t *testing.T) {
	env := map[string]string{}
	for i := 0; len(mustJSON(t, env)) < 3000; i++ {
		b := make([]byte, 32)
		rand.Read(b)
		env["K"+hex.EncodeToString(b[:2])+string(rune('A'+i%26))] = hex.EncodeToString(b)
	}
	m := &Manifest{Name: "big", Version: "1", Initramfs: &Artifact{URL: "/i"},
		Workload: Workload{Entrypoint: []string{"/a"}, Env: env}}
	m.Normalize()
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	if j, _ := m.JSON(); len(j) < 3000 {
		t.Fatalf("manifest only %d bytes", len(j))
	}
	_, err := m.Cmdline(DefaultFragmentBudget)
	if !apierr.Is(err, apierr.CmdlineTooLong) {
		t.Fatalf("err = %v, want CMDLINE_TOO_LONG", err)
	}
	d := apierr.From(err).Details
	if d["budget"] != DefaultFragmentBudget || d["bytes"].(int) <= DefaultFragmentBudget {
		t.Fatalf("details %v", d)
	}
	if !strings.Contains(err.Error(), "budget is 1535") {
		t.Fatalf("message must say the budget: %v", err)
	}
	// Even the whole kernel limit is too small for it.
	if _, err := m.Cmdline(bootargs.MaxCmdline); !apierr.Is(err, apierr.CmdlineTooLong) {
		t.Fatalf("2047-byte budget: %v", err)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeStringRejectsGarbage(t *testing.T) {
	for _, s := range []string{"!!!", "aGVsbG8", strings.Repeat("A", 40)} {
		if _, err := DecodeString(s); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("%q: err = %v", s, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, b := range ManifestExamples(f) {
		f.Add(b)
	}
	files, _ := filepath.Glob("testdata/invalid/*.json")
	for _, p := range files {
		b, _ := os.ReadFile(p)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		if err != nil {
			if apierr.CodeOf(err) == apierr.Internal {
				t.Fatalf("internal error for user input: %v", err)
			}
			return
		}
		enc, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeString(enc)
		if err != nil {
			t.Fatalf("valid manifest does not decode after encoding: %v", err)
		}
		if !reflect.DeepEqual(back, m) {
			t.Fatalf("round trip differs")
		}
	})
}

func FuzzDecodeString(f *testing.F) {
	for _, b := range ManifestExamples(f) {
		m, err := Parse(b)
		if err != nil {
			f.Fatal(err)
		}
		enc, _ := m.Encode()
		f.Add(enc)
	}
	f.Add("H4sIAAAAAAAA")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := DecodeString(s)
		if err != nil {
			if apierr.CodeOf(err) == apierr.Internal {
				t.Fatalf("internal error for user input: %v", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("decoded manifest is not valid: %v", err)
		}
	})
}

func TestNameAndLabelLengthLimits(t *testing.T) {
	base := func(name, label string) []byte {
		return []byte(`{"name":"` + name + `","version":"1","initramfs":{"url":"/i.cpio"},"workload":{"entrypoint":["/a"]},"labels":{"` + label + `":"v"}}`)
	}
	if _, err := Parse(base(strings.Repeat("a", 63), strings.Repeat("b", 63))); err != nil {
		t.Fatalf("63 characters must be accepted: %v", err)
	}
	if _, err := Parse(base(strings.Repeat("a", 64), "b")); err == nil {
		t.Fatal("a 64-character name was accepted")
	}
	if _, err := Parse(base("a", strings.Repeat("b", 64))); err == nil {
		t.Fatal("a 64-character label key was accepted")
	}
}

// A workload's arguments are argv, not display text: a script for `sh -c`
// holds line breaks and tabs. Other control characters stay refused.
func TestEntrypointScriptsKeepLineBreaks(t *testing.T) {
	m := func(arg string) []byte {
		b, _ := json.Marshal(map[string]any{"name": "a", "version": "1", "initramfs": map[string]any{"url": "/i.cpio"},
			"workload": map[string]any{"entrypoint": []string{"/bin/sh", "-c", arg}}})
		return b
	}
	if _, err := Parse(m("trap 'exit 0' TERM\n\twhile :; do sleep 1; done\r\n")); err != nil {
		t.Fatalf("a script with line breaks and tabs was refused: %v", err)
	}
	for _, bad := range []string{"echo \x1b[2J", "echo \a", "echo \x7f", "echo \u0085"} {
		if _, err := Parse(m(bad)); err == nil {
			t.Errorf("entrypoint argument %q was accepted", bad)
		}
	}
}

// A version is one path component and part of URLs: the rule of
// lib/names, whose cases cover the characters; here, that the manifest
// applies it and accepts the versions examples and docs use.
func TestVersionRule(t *testing.T) {
	m := func(version string) []byte {
		b, _ := json.Marshal(map[string]any{"name": "a", "version": version, "initramfs": map[string]any{"url": "/i.cpio"},
			"workload": map[string]any{"entrypoint": []string{"/a"}}})
		return b
	}
	for _, ok := range []string{"1", "1.0", "1.0.0", "v2", "2024.01+build.3", "1.27-alpine", "17.0.9_9-jre", strings.Repeat("1", 64)} {
		if _, err := Parse(m(ok)); err != nil {
			t.Errorf("version %q was refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"../../etc", "..", ".1", "1.0/beta", "-1", "1 0", "1\x00", strings.Repeat("1", 65)} {
		_, err := Parse(m(bad))
		if ps := Problems(err); len(ps) != 1 || ps[0].Field != "version" {
			t.Errorf("version %q: problems %v, want one of the field version", bad, ps)
		}
	}
}

func TestSecretPathLength(t *testing.T) {
	m := func(p string) []byte {
		b, _ := json.Marshal(map[string]any{"name": "a", "version": "1", "initramfs": map[string]any{"url": "/i.cpio"},
			"workload": map[string]any{"entrypoint": []string{"/a"}}, "secrets": map[string]any{"files": []string{p}}})
		return b
	}
	long := "/" + strings.Repeat("abc/", 1022) + "abcdef"
	if len(long) != MaxGuestPath {
		t.Fatalf("the test's path is %d bytes", len(long))
	}
	if _, err := Parse(m(long)); err != nil {
		t.Fatalf("a secret path of %d bytes was refused: %v", len(long), err)
	}
	_, err := Parse(m(long + "b"))
	if ps := Problems(err); len(ps) != 1 || ps[0].Field != "secrets.files[0]" {
		t.Fatalf("a secret path of %d bytes: problems %v, want one of secrets.files[0]", len(long)+1, ps)
	}
}
