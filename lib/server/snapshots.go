package server

import (
	"bytes"
	"net/http"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

// snapshotRoutes are the snapshot part of the route table (docs/snapshots.md).
func (s *Server) snapshotRoutes() []route {
	return []route{
		{method: "POST", path: api.Prefix + "/vms/{name}/snapshot", id: "snapshotVM", tag: "snapshots",
			summary: "Save a running VM as a snapshot: paused, its disks and volumes copied point-in-time (reflink, else a sparse copy), " +
				"its memory and device state saved, resumed; the VM runs on. The body is optional",
			req: api.CreateSnapshotRequest{}, status: 201, resp: api.Snapshot{},
			errors:  append(append(nameErrors, bodyErrors...), apierr.Conflict, apierr.NotSupported, apierr.Unavailable, apierr.NoSpace),
			handler: http.HandlerFunc(s.snapshotVM)},
		{method: "POST", path: api.Prefix + "/vms/{name}/restore", id: "restoreVM", tag: "snapshots",
			summary: "Roll a VM back to a snapshot (of a VM of the same plugin, CPUs and memory): stopped, its disks replaced by its own " +
				"images of the snapshot's, started from the saved state under its own name, address and MAC (vm.restored once healthy)",
			req: api.RestoreVMRequest{}, status: 200, resp: api.VM{},
			errors:  append(append(nameErrors, bodyErrors...), apierr.Conflict, apierr.NotSupported, apierr.Unavailable, apierr.Timeout),
			handler: http.HandlerFunc(s.restoreVM)},
		{method: "GET", path: api.Prefix + "/snapshots", id: "listSnapshots", tag: "snapshots", summary: "List snapshots",
			status: 200, resp: api.SnapshotList{}, handler: http.HandlerFunc(s.listSnapshots)},
		{method: "GET", path: api.Prefix + "/snapshots/{name}", id: "getSnapshot", tag: "snapshots",
			summary: "Show a snapshot: its sizes, how its disks were copied, the VMs and deployments using it",
			status:  200, resp: api.Snapshot{}, errors: nameErrors, handler: http.HandlerFunc(s.getSnapshot)},
		{method: "DELETE", path: api.Prefix + "/snapshots/{name}", id: "deleteSnapshot", tag: "snapshots",
			summary: "Delete a snapshot (CONFLICT while a VM started from it or a deployment starting replicas from it exists)",
			status:  200, resp: api.Snapshot{}, errors: append(nameErrors, apierr.Conflict), handler: http.HandlerFunc(s.deleteSnapshot)},
	}
}

func (s *Server) snapshotVM(w http.ResponseWriter, r *http.Request) {
	var req api.CreateSnapshotRequest
	data, err := readBody(w, r)
	if err == nil && len(bytes.TrimSpace(data)) > 0 {
		err = decodeStrict(data, &req)
	}
	if err != nil {
		writeError(w, r, err)
		return
	}
	snap, err := s.ctl.SnapshotVM(r.Context(), r.PathValue("name"), req)
	if err != nil {
		writeError(w, r, err)
		return
	}
	w.Header().Set("Location", api.Prefix+"/snapshots/"+snap.Name)
	writeJSON(w, http.StatusCreated, snap)
}

func (s *Server) restoreVM(w http.ResponseWriter, r *http.Request) {
	var req api.RestoreVMRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	vm, err := s.ctl.RestoreVM(r.Context(), r.PathValue("name"), req)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, vm)
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	ss, err := s.ctl.ListSnapshots(r.Context())
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.SnapshotList{Snapshots: ss})
}

func (s *Server) getSnapshot(w http.ResponseWriter, r *http.Request) {
	snap, err := s.ctl.Snapshot(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, snap)
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	snap, err := s.ctl.DeleteSnapshot(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, snap)
}
