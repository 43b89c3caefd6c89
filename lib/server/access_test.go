package server

import (
	"context"
	"sort"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/volantvm/volant/lib/auth"
)

// TestEveryRouteHasARole: the access table names every registered route's
// operation and nothing else, each with a real role (only /healthz is
// open to anyone); every MCP tool names an operation of the table.
func TestEveryRouteHasARole(t *testing.T) {
	s := New(nil, Options{})
	table := access()
	seen := map[string]bool{}
	for _, rt := range s.routes() {
		seen[rt.id] = true
		r, ok := table[rt.id]
		switch {
		case !ok:
			t.Errorf("%s %s (%s) has no entry in access()", rt.method, rt.path, rt.id)
		case r == anyone && rt.id != "health":
			t.Errorf("%s (%s %s) is open to anyone; only health may be", rt.id, rt.method, rt.path)
		case r != anyone && !r.Valid():
			t.Errorf("%s needs role %q, not a role", rt.id, r)
		}
	}
	for id := range table {
		if !seen[id] {
			t.Errorf("access() names %s, which no route has", id)
		}
	}
	// The tools the MCP server registers, listed through a client.
	srv := newMCPServer(ControllerBackend{}, nil, nil)
	ct, st := mcp.NewInMemoryTransports()
	ctx := context.Background()
	ss, err := srv.Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "t", Version: "1"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	lr, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	tools := mcpTools()
	var names []string
	for _, tool := range lr.Tools {
		names = append(names, tool.Name)
		op, ok := tools[tool.Name]
		if !ok {
			t.Errorf("MCP tool %s names no operation in mcpTools()", tool.Name)
			continue
		}
		if _, ok := table[op]; !ok {
			t.Errorf("MCP tool %s performs %s, which access() lacks", tool.Name, op)
		}
		// A tool the SDK calls read-only must need no more than a viewer.
		if tool.Annotations != nil && tool.Annotations.ReadOnlyHint && table[op] != auth.Viewer {
			t.Errorf("read-only MCP tool %s needs %s", tool.Name, table[op])
		}
	}
	if len(names) != len(tools) {
		sort.Strings(names)
		t.Errorf("mcpTools() has %d entries, the server registers %d tools: %v", len(tools), len(names), names)
	}
	// Roles are ordered, and unknown ones allow nothing.
	for _, c := range []struct {
		have, need auth.Role
		ok         bool
	}{{auth.Viewer, auth.Viewer, true}, {auth.Viewer, auth.Operator, false}, {auth.Operator, auth.Admin, false},
		{auth.Admin, auth.Viewer, true}, {"root", auth.Viewer, false}, {auth.Admin, anyone, false}, {"", auth.Viewer, false}} {
		if got := c.have.Allows(c.need); got != c.ok {
			t.Errorf("%q.Allows(%q) = %v", c.have, c.need, got)
		}
	}
}
