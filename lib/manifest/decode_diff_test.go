package manifest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
)

// decodeEdgeCases are inputs where a single pass could part from the
// generic decode it replaced: keys that differ from a field only by case,
// keys given twice, escaped and non-UTF-8 keys, numbers a float64 cannot
// hold, values of the wrong kind under unknown keys, nesting.
var decodeEdgeCases = []string{
	``, ` `, `null`, `[]`, `"x"`, `1`, `true`, ` {} `, `{}x`, `{"a":1}{`,
	`{"Name":"a"}`,
	`{"name":"a","NAME":"b"}`,
	`{"workload":{"Entrypoint":["/a"]}}`,
	`{"workload":{"entrypoint":["/a"]},"workload":{"x":1}}`,
	`{"workload":{"x":1},"workload":{"entrypoint":["/a"]}}`,
	`{"workload":{"x":1},"workload":null}`,
	`{"workload":{"x":1},"workload":[]}`,
	`{"\u006eame":"a","n\u0061me":"b"}`,
	`{"na\u00e9me":1}`,
	"{\"na\xffme\":1}",
	"{\"\xff\":1,\"\xfe\":2}",
	`{"\ud800":1}`,
	`{"\"":1,"\\":2,"\/":3}`,
	`{"a":1e400}`, `{"a":-1e400}`, `{"a":1e-400}`, `{"x":[1,2,1E309]}`,
	`{"resources":{"cpu_cores":1e400}}`,
	`{"resources":{"cpu_cores":1.5,"memory_mb":"x"}}`,
	`{"a":"1e400"}`,
	`{"name":"` + strings.Repeat("9", 400) + `"}`,
	`{"x":` + strings.Repeat("9", 308) + `}`,
	`{"x":` + strings.Repeat("9", 309) + `}`,
	`{"x":` + strings.Repeat("9", 400) + `.5}`,
	`{"x":0.` + strings.Repeat("9", 400) + `}`,
	`{"disks":[{"name":"a","x":1},{"y":2},null,3,{"Name":"b"}]}`,
	`{"disks":{"name":"a","x":1}}`,
	`{"actions":{"b":{"pth":"/x"},"a":{"Path":"/y"},"c":null,"d":[1]}}`,
	`{"actions":[{"pth":"/x"}]}`,
	`{"labels":{"a":{"b":1}},"workload":{"env":{"A":[1]}}}`,
	`{"initramfs":{"url":"/a","sha":"x"},"cloud_init":{},"rootfs":{"URL":"x"}}`,
	`{"secrets":{"env":["A"],"Files":["/x"],"files":[{"x":1}]}}`,
	`{"network":{"mode":"none","agentport":1},"console":{"shel":"/bin/sh"}}`,
	`{"health_check":{"endpont":"/","interval":1},"openapi":{"x":1}}`,
	`{ "name" : "a" , "x" : [ { } , { "y" : 1 } ] , "z" : { "w" : { } } }`,
	"{\n\t\"name\":\r\n\"a\",\"x\"\t:\ttrue}",
	`{"name":"a\"},{\"x\":1"}`,
	`{"name":"a","version":"1","initramfs":{"url":"/a"},"workload":{"entrypoint":["/a"],"base_ur":"http://x"}}`,
	`{"enabled":"yes","enabld":true}`,
	`{"schema_version":1,"$schema":"x","$Schema":"y"}`,
	strings.Repeat(`[`, 10001) + strings.Repeat(`]`, 10001),
	`{"x":` + strings.Repeat(`{"y":`, 500) + `1` + strings.Repeat(`}`, 500) + `}`,
}

// decodeSeeds are the decoder's corpus: the edge cases, the examples, the
// invalid manifests, and every request body and stdin of the bad-input
// corpus (tests/badinput).
func decodeSeeds(t testing.TB) [][]byte {
	t.Helper()
	var seeds [][]byte
	for _, s := range decodeEdgeCases {
		seeds = append(seeds, []byte(s))
	}
	for _, b := range ManifestExamples(t) {
		seeds = append(seeds, b)
	}
	files, _ := filepath.Glob("testdata/invalid/*.json")
	more, _ := filepath.Glob("../../tests/badinput/*/*.jsonl")
	if len(files) < 10 || len(more) < 2 {
		t.Fatalf("corpus missing: %d invalid manifests, %d bad-input files", len(files), len(more))
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	for _, f := range more {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var c struct {
				Stdin string          `json:"stdin"`
				Body  json.RawMessage `json:"body"`
			}
			if json.Unmarshal(sc.Bytes(), &c) != nil {
				continue // a comment
			}
			if c.Stdin != "" {
				seeds = append(seeds, []byte(c.Stdin))
			}
			var body string
			if json.Unmarshal(c.Body, &body) == nil && body != "" {
				seeds = append(seeds, []byte(body))
			} else if len(c.Body) > 0 {
				seeds = append(seeds, c.Body)
			}
		}
	}
	return seeds
}

// checkSameDecode fails unless Decode and the decoder before it agree on
// data: both accept it with equal manifests, or both refuse it with the
// same code, message and problems.
func checkSameDecode(t testing.TB, data []byte) {
	t.Helper()
	got, gotErr := Decode(data)
	want, wantErr := decodeReference(data)
	if (gotErr == nil) != (wantErr == nil) {
		t.Fatalf("%q:\n got error %v\nwant error %v", data, gotErr, wantErr)
	}
	if wantErr != nil {
		if apierr.CodeOf(gotErr) != apierr.CodeOf(wantErr) || gotErr.Error() != wantErr.Error() ||
			!reflect.DeepEqual(Problems(gotErr), Problems(wantErr)) {
			t.Fatalf("%q:\n got %v %q\nwant %v %q", data, gotErr, Problems(gotErr), wantErr, Problems(wantErr))
		}
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\n got %+v\nwant %+v", data, got, want)
	}
}

// mutate returns a variant of b: a key's case changed, a byte removed,
// inserted or replaced, a member duplicated, a number made too large, an
// unknown key added, a key escaped.
func mutate(r *rand.Rand, b []byte) []byte {
	b = bytes.Clone(b)
	at := func() int { return r.IntN(len(b) + 1) }
	switch r.IntN(9) {
	case 0: // change the case of a letter
		for range 8 {
			if len(b) == 0 {
				break
			}
			i := r.IntN(len(b))
			if c := b[i]; 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' {
				b[i] ^= 0x20
				break
			}
		}
	case 1:
		if len(b) > 0 {
			i := r.IntN(len(b))
			b = append(b[:i], b[i+1:]...)
		}
	case 2:
		const alphabet = "{}[]\",:0123456789.eE+- \t\\unlx\xff\xc3\xa9"
		i := at()
		b = append(b[:i], append([]byte{alphabet[r.IntN(len(alphabet))]}, b[i:]...)...)
	case 3: // copy a span elsewhere: duplicate keys, members, nesting
		if len(b) > 1 {
			i := r.IntN(len(b))
			j := i + 1 + r.IntN(min(len(b)-i, 64))
			span := bytes.Clone(b[i:min(j, len(b))])
			k := at()
			b = append(b[:k], append(span, b[k:]...)...)
		}
	case 4: // a number a float64 cannot hold
		if i := bytes.IndexAny(b, "0123456789"); i >= 0 {
			b = append(b[:i], append([]byte("1e400"), b[i:]...)...)
		}
	case 5: // an unknown or miscased key after an opening brace
		keys := []string{`"x":1,`, `"Name":"a",`, `"workload":{},`, `"url":"/b",`, `"entrypoint":[],`, `"Path":"/",`, `"name":"a",`}
		var braces []int
		for i, c := range b {
			if c == '{' {
				braces = append(braces, i)
			}
		}
		if len(braces) > 0 {
			i := braces[r.IntN(len(braces))]
			k := keys[r.IntN(len(keys))]
			b = append(b[:i+1], append([]byte(k), b[i+1:]...)...)
		}
	case 6: // escape a letter of a string
		for range 8 {
			if len(b) == 0 {
				break
			}
			i := r.IntN(len(b))
			if c := b[i]; 'a' <= c && c <= 'z' {
				esc := []byte(`\u00` + "0123456789abcdef"[c>>4:c>>4+1] + "0123456789abcdef"[c&15:c&15+1])
				b = append(b[:i], append(esc, b[i+1:]...)...)
				break
			}
		}
	case 7: // replace a byte
		if len(b) > 0 {
			b[r.IntN(len(b))] = byte(r.IntN(256))
		}
	case 8: // two mutations
		b = mutate(r, mutate(r, b))
	}
	return b
}

// TestDecodeAgreesWithTheGenericDecode compares Decode with the decoder
// before it (reference_test.go) on the corpus and on mutations of it,
// drawn from a fixed seed: the same answers, the same errors.
func TestDecodeAgreesWithTheGenericDecode(t *testing.T) {
	r := rand.New(rand.NewPCG(20, 12))
	for _, seed := range decodeSeeds(t) {
		checkSameDecode(t, seed)
		for range 40 {
			checkSameDecode(t, mutate(r, seed))
		}
	}
}

// FuzzDecodeAgrees is the same comparison for `go test -fuzz`.
func FuzzDecodeAgrees(f *testing.F) {
	for _, s := range decodeSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkSameDecode(t, data)
	})
}

// BenchmarkDecode decodes the examples (sub-benchmark "now") and the same
// with the decoder before (reference_test.go), for `go test -bench`.
func BenchmarkDecode(b *testing.B) {
	examples := ManifestExamples(b)
	for _, d := range []struct {
		name   string
		decode func([]byte) (*Manifest, error)
	}{{"now", Decode}, {"before", decodeReference}} {
		b.Run(d.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				for _, data := range examples {
					if _, err := d.decode(data); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
