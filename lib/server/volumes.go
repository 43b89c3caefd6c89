package server

import (
	"net/http"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

// volumeRoutes are the volume part of the route table.
func (s *Server) volumeRoutes() []route {
	return []route{
		{method: "GET", path: api.Prefix + "/volumes", id: "listVolumes", tag: "volumes", summary: "List volumes",
			status: 200, resp: api.VolumeList{}, handler: http.HandlerFunc(s.listVolumes)},
		{method: "POST", path: api.Prefix + "/volumes", id: "createVolume", tag: "volumes",
			summary: "Create a volume: a sparse disk image with an empty filesystem, which outlives the VMs that use it",
			req:     api.CreateVolumeRequest{}, status: 201, resp: api.Volume{},
			errors:  append(bodyErrors, apierr.Conflict, apierr.NoSpace, apierr.Unavailable),
			handler: http.HandlerFunc(s.createVolume)},
		{method: "GET", path: api.Prefix + "/volumes/{name}", id: "getVolume", tag: "volumes", summary: "Show a volume and the VMs that use it",
			status: 200, resp: api.Volume{}, errors: nameErrors, handler: http.HandlerFunc(s.getVolume)},
		{method: "DELETE", path: api.Prefix + "/volumes/{name}", id: "deleteVolume", tag: "volumes",
			summary: "Delete a volume and its data (VOLUME_IN_USE while any VM is attached to it)",
			status:  200, resp: api.Volume{}, errors: append(nameErrors, apierr.VolumeInUse, apierr.Conflict),
			handler: http.HandlerFunc(s.deleteVolume)},
		{method: "POST", path: api.Prefix + "/volumes/{name}/resize", id: "resizeVolume", tag: "volumes",
			summary: "Grow a volume and its filesystem (VOLUME_IN_USE while a VM using it runs: stop it first)",
			req:     api.ResizeVolumeRequest{}, status: 200, resp: api.Volume{},
			errors:  append(append(nameErrors, bodyErrors...), apierr.VolumeInUse, apierr.Conflict, apierr.NoSpace),
			handler: http.HandlerFunc(s.resizeVolume)},
	}
}

func (s *Server) listVolumes(w http.ResponseWriter, r *http.Request) {
	vs, err := s.ctl.ListVolumes(r.Context())
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.VolumeList{Volumes: vs})
}

func (s *Server) createVolume(w http.ResponseWriter, r *http.Request) {
	var req api.CreateVolumeRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	v, err := s.ctl.CreateVolume(r.Context(), req)
	if err != nil {
		writeError(w, r, err)
		return
	}
	w.Header().Set("Location", api.Prefix+"/volumes/"+v.Name)
	writeJSON(w, http.StatusCreated, v)
}

func (s *Server) getVolume(w http.ResponseWriter, r *http.Request) {
	v, err := s.ctl.Volume(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) deleteVolume(w http.ResponseWriter, r *http.Request) {
	v, err := s.ctl.DeleteVolume(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) resizeVolume(w http.ResponseWriter, r *http.Request) {
	var req api.ResizeVolumeRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	v, err := s.ctl.ResizeVolume(r.Context(), r.PathValue("name"), req)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}
