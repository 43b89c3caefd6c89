package server

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"

	"github.com/volantvm/volant/lib/api"
)

// maxCachedLists bounds how many filters' answers vmListCache keeps for one
// generation (a client sweeping filters cannot grow it without bound).
const maxCachedLists = 32

// vmListCache keeps the encoded answers of GET /api/v1/vms, one per
// filter, for one store generation (store.Store.Generation). Every change
// of a VM is a write transaction volantd commits, which advances the
// generation, so an answer is served from here only while no VM can have
// changed since it was read; the first request after a change reads and
// encodes the list again (one request at a time: the others wait for it
// instead of repeating the work). Clients that poll the list (dashboards,
// `volar vms list --watch`, wrk) then cost an HTTP write, not a read of
// every row and an encoding of every VM.
type vmListCache struct {
	build sync.Mutex // held while a list is read and encoded

	mu     sync.Mutex
	gen    uint64
	bodies map[api.VMFilter][]byte
}

func (c *vmListCache) get(gen uint64, f api.VMFilter) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return nil
	}
	return c.bodies[f]
}

func (c *vmListCache) put(gen uint64, f api.VMFilter, body []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen < c.gen {
		return // an older read finished late
	}
	if gen > c.gen || c.bodies == nil {
		c.gen, c.bodies = gen, map[api.VMFilter][]byte{}
	}
	if len(c.bodies) < maxCachedLists {
		c.bodies[f] = body
	}
}

// list returns the encoded api.VMList for f: from the cache when nothing
// was committed since it was encoded, else read now. generation is read
// before the list, so a cached answer is never older than the newest
// commit that had returned when the request arrived.
func (c *vmListCache) list(ctx context.Context, generation func() uint64, read func(context.Context, api.VMFilter) ([]api.VM, error), f api.VMFilter) ([]byte, error) {
	if b := c.get(generation(), f); b != nil {
		return b, nil
	}
	c.build.Lock()
	defer c.build.Unlock()
	gen := generation()
	if b := c.get(gen, f); b != nil {
		return b, nil // built while this request waited
	}
	vms, err := read(ctx, f)
	if err != nil {
		return nil, err
	}
	body, err := encodeJSON(api.VMList{VMs: vms})
	if err != nil {
		return nil, err
	}
	c.put(gen, f, body)
	return body, nil
}

// encodeJSON is the body writeJSON writes for v.
func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
