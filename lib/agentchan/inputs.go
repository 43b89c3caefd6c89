package agentchan

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/volantvm/volant/lib/apierr"
)

// Inputs are what a VM receives before its workload starts (volantd's
// CreateVMRequest.Inputs): environment variables for the workload, files
// to write, empty directories to make. They travel over this channel only,
// never on the kernel command line or the guest network.
type Inputs struct {
	Env   map[string]string `json:"env,omitempty"`
	Files []InputFile       `json:"files,omitempty"`
	Dirs  []string          `json:"dirs,omitempty"`
}

// InputFile is one file of Inputs.
type InputFile struct {
	// Path is absolute, in the guest.
	Path string `json:"path"`
	// Mode is the permission bits (default 0644).
	Mode uint32 `json:"mode,omitempty"`
	// Data is the content (base64 in JSON).
	Data []byte `json:"data"`
}

// InputsRequest is the request line of the inputs op. The files' contents
// follow it on the stream, in order, Size bytes each; the guest then
// answers Reply{OK} once it has written them, or an error.
type InputsRequest struct {
	Op    string            `json:"op"`
	Env   map[string]string `json:"env,omitempty"`
	Files []InputFileHeader `json:"files,omitempty"`
	Dirs  []string          `json:"dirs,omitempty"`
}

// InputFileHeader describes one file of an InputsRequest.
type InputFileHeader struct {
	Path string `json:"path"`
	Mode uint32 `json:"mode,omitempty"`
	Size int64  `json:"size"`
}

// MaxInputsBytes bounds the contents of an InputsRequest.
const MaxInputsBytes = 8 << 20

// SendInputs hands in to the guest (op inputs) and waits for it to have
// applied them.
func (s *Session) SendInputs(ctx context.Context, in *Inputs) error {
	req := InputsRequest{Op: OpInputs, Env: in.Env, Dirs: in.Dirs}
	var total int64
	for _, f := range in.Files {
		req.Files = append(req.Files, InputFileHeader{Path: f.Path, Mode: f.Mode, Size: int64(len(f.Data))})
		total += int64(len(f.Data))
	}
	if total > MaxInputsBytes {
		return apierr.New(apierr.TooLarge, "inputs of %d bytes; the agent channel takes %d", total, MaxInputsBytes)
	}
	st, err := s.Open(req)
	if err != nil {
		return err
	}
	defer st.Conn.Close()
	stop := context.AfterFunc(ctx, func() { st.Abort() })
	defer stop()
	for _, f := range in.Files {
		if _, err := st.Conn.Write(f.Data); err != nil {
			return lost("while sending the inputs", err)
		}
	}
	var r Reply
	if err := st.ReadLine(&r); err != nil {
		if ctx.Err() != nil {
			return apierr.From(context.Cause(ctx))
		}
		return lost("before the inputs were applied", err)
	}
	return r.Err()
}

// ReadInputFiles reads the contents announced by req from r (the guest's
// side of the inputs op).
func ReadInputFiles(r io.Reader, req InputsRequest) (*Inputs, error) {
	in := &Inputs{Env: req.Env, Dirs: req.Dirs}
	var total int64
	for _, h := range req.Files {
		if h.Size < 0 || total+h.Size > MaxInputsBytes {
			return nil, apierr.New(apierr.TooLarge, "inputs larger than %d bytes", MaxInputsBytes)
		}
		total += h.Size
		var b bytes.Buffer
		if _, err := io.CopyN(&b, r, h.Size); err != nil {
			return nil, fmt.Errorf("reading input file %s: %w", h.Path, err)
		}
		in.Files = append(in.Files, InputFile{Path: h.Path, Mode: h.Mode, Data: b.Bytes()})
	}
	return in, nil
}
