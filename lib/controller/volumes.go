package controller

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/names"
	"github.com/volantvm/volant/lib/store"
	"github.com/volantvm/volant/lib/volume"
)

// Volumes
//
// A volume is a row of the volumes table and an image file under
// <data>/volumes (lib/volume). Every operation records its state in the row
// before it touches the file, and the row's end state after, so that
// ReconcileVolumes, run at startup, can tell what a crash interrupted:
//
//	create  row "creating" → image made (temp + rename) → row "ready", volume.created
//	resize  row "resizing" with the new size → image and filesystem grown → "ready", volume.resized
//	delete  row "deleting" → image removed → row deleted, volume.deleted
//
// A VM uses volumes through volume_attachments rows, written in the
// transaction that creates the VM and deleted with it; the table's foreign
// key refuses to delete a volume that has any. Before a VM starts, its
// "volumes" step claims its attachments in a transaction that first checks
// that no other live VM holds the volume in a conflicting way (one writer,
// or any number of readers): VOLUME_IN_USE.

// liveStates are the VM states in which a VM's hypervisor may run: its
// claimed volumes are held.
const liveStates = `'starting', 'running', 'stopping', 'deleting'`

type volumeRow struct {
	Name       string
	SizeBytes  int64
	FS         string
	Format     string
	State      api.VolumeState
	Path       string
	Deployment string
	Error      string
	CreatedAt  time.Time
	UpdatedAt  time.Time
}

const volumeColumns = `name, size_bytes, fs, format, state, path, deployment, error, created_at, updated_at`

func scanVolume(r rowScanner) (volumeRow, error) {
	var v volumeRow
	var dep sql.NullString
	var state, created, updated string
	if err := r.Scan(&v.Name, &v.SizeBytes, &v.FS, &v.Format, &state, &v.Path, &dep, &v.Error, &created, &updated); err != nil {
		return v, err
	}
	v.State, v.Deployment = api.VolumeState(state), dep.String
	var err error
	if v.CreatedAt, err = store.ParseTime(created); err != nil {
		return v, err
	}
	v.UpdatedAt, err = store.ParseTime(updated)
	return v, err
}

func getVolume(ctx context.Context, q querier, name string) (volumeRow, error) {
	v, err := scanVolume(q.QueryRowContext(ctx, `SELECT `+volumeColumns+` FROM volumes WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return v, apierr.New(apierr.NotFound, "no volume named %s", name).With("volume", name)
	}
	if err != nil {
		return v, fmt.Errorf("reading volume %s: %w", name, err)
	}
	return v, nil
}

func listVolumes(ctx context.Context, q querier, where string, args ...any) ([]volumeRow, error) {
	query := `SELECT ` + volumeColumns + ` FROM volumes`
	if where != "" {
		query += " WHERE " + where
	}
	rows, err := q.QueryContext(ctx, query+" ORDER BY name", args...)
	if err != nil {
		return nil, fmt.Errorf("listing volumes: %w", err)
	}
	defer rows.Close()
	var out []volumeRow
	for rows.Next() {
		v, err := scanVolume(rows)
		if err != nil {
			return nil, fmt.Errorf("listing volumes: %w", err)
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

func setVolumeState(ctx context.Context, tx *sql.Tx, name string, state api.VolumeState, size int64, msg string) error {
	_, err := tx.ExecContext(ctx, `UPDATE volumes SET state = ?, size_bytes = ?, error = ?, updated_at = ? WHERE name = ?`,
		string(state), size, msg, store.FormatTime(time.Now()), name)
	return internal(err, "updating volume %s", name)
}

// attachmentRow is one VM's use of a volume.
type attachmentRow struct {
	VM       string
	Volume   string
	Idx      int
	Path     string
	ReadOnly bool
	Claimed  bool
	// Holding: claimed, and the VM is live.
	Holding bool
	// File and Format are the volume's image.
	File, Format string
}

const attachmentQuery = `SELECT a.vm, a.volume, a.idx, a.path, a.readonly, a.claimed,
	a.claimed = 1 AND v.state IN (` + liveStates + `), vol.path, vol.format
	FROM volume_attachments a JOIN vms v ON v.id = a.vm JOIN volumes vol ON vol.name = a.volume`

func queryAttachments(ctx context.Context, q querier, where string, args ...any) ([]attachmentRow, error) {
	rows, err := q.QueryContext(ctx, attachmentQuery+" WHERE "+where+" ORDER BY a.vm, a.idx", args...)
	if err != nil {
		return nil, fmt.Errorf("reading volume attachments: %w", err)
	}
	defer rows.Close()
	var out []attachmentRow
	for rows.Next() {
		var a attachmentRow
		if err := rows.Scan(&a.VM, &a.Volume, &a.Idx, &a.Path, &a.ReadOnly, &a.Claimed, &a.Holding, &a.File, &a.Format); err != nil {
			return nil, fmt.Errorf("reading volume attachments: %w", err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

func (c *Controller) volumeAPI(v volumeRow, atts []attachmentRow) api.Volume {
	out := api.Volume{
		Name: v.Name, SizeBytes: v.SizeBytes, Size: volume.FormatSize(v.SizeBytes), FS: v.FS, Format: v.Format,
		State: v.State, Path: v.Path, Deployment: v.Deployment, Error: v.Error,
		CreatedAt: v.CreatedAt, UpdatedAt: v.UpdatedAt, Attachments: []api.VolumeAttachment{},
	}
	if info, err := volume.Stat(v.Path); err == nil {
		out.AllocatedBytes = info.Allocated
	}
	for _, a := range atts {
		if a.Volume == v.Name {
			out.Attachments = append(out.Attachments, api.VolumeAttachment{VM: a.VM, Path: a.Path, ReadOnly: a.ReadOnly, Holding: a.Holding})
		}
	}
	return out
}

// ListVolumes returns the volumes by name.
func (c *Controller) ListVolumes(ctx context.Context) ([]api.Volume, error) {
	var vs []volumeRow
	var atts []attachmentRow
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		if vs, err = listVolumes(ctx, tx, ""); err != nil {
			return err
		}
		atts, err = queryAttachments(ctx, tx, "1")
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]api.Volume, 0, len(vs))
	for _, v := range vs {
		out = append(out, c.volumeAPI(v, atts))
	}
	return out, nil
}

// Volume returns one volume; NOT_FOUND when there is none of that name.
func (c *Controller) Volume(ctx context.Context, name string) (*api.Volume, error) {
	var v volumeRow
	var atts []attachmentRow
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		if v, err = getVolume(ctx, tx, name); err != nil {
			return err
		}
		atts, err = queryAttachments(ctx, tx, "a.volume = ?", name)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := c.volumeAPI(v, atts)
	return &out, nil
}

// VolumePath is where a volume's image lives.
func (c *Controller) VolumePath(name string) string {
	return layout.Dirs{Data: c.cfg.DataDir}.VolumeImage(name)
}

// requestSize reads a size given as words or as bytes (exactly one).
func requestSize(words string, n int64) (int64, error) {
	switch {
	case words != "" && n != 0:
		return 0, apierr.New(apierr.InvalidInput, "give size or size_bytes, not both").With("field", "size")
	case words != "":
		n, err := volume.ParseSize(words)
		if err != nil {
			return 0, err
		}
		return n, volume.CheckSize(n)
	case n != 0:
		n = volume.RoundSize(n)
		return n, volume.CheckSize(n)
	}
	return 0, apierr.New(apierr.InvalidInput, "a size is required: size (such as \"1GiB\") or size_bytes").With("field", "size")
}

// CreateVolume makes a volume: its row, then its image with an empty
// filesystem. A create that fails (a full disk: NO_SPACE) leaves neither.
func (c *Controller) CreateVolume(ctx context.Context, req api.CreateVolumeRequest) (*api.Volume, error) {
	return c.createVolume(ctx, req, "")
}

func (c *Controller) createVolume(ctx context.Context, req api.CreateVolumeRequest, deployment string) (*api.Volume, error) {
	if err := checkName("volume name", req.Name); err != nil {
		return nil, err
	}
	size, err := requestSize(req.Size, req.SizeBytes)
	if err != nil {
		return nil, err
	}
	fs := req.FS
	if fs == "" {
		fs = volume.DefaultFS
	}
	if err := volume.CheckFS(fs); err != nil {
		return nil, err
	}
	unlock, err := c.locks.lock(ctx, "volume:"+req.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	path := c.VolumePath(req.Name)
	now := store.FormatTime(time.Now())
	err = c.st.Tx(ctx, func(tx *sql.Tx) error {
		if _, err := getVolume(ctx, tx, req.Name); err == nil {
			return apierr.New(apierr.Conflict, "a volume named %s exists already", req.Name).With("volume", req.Name)
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO volumes (name, size_bytes, fs, format, state, path, deployment, error, created_at, updated_at)
			VALUES (?, ?, ?, 'raw', 'creating', ?, ?, '', ?, ?)`, req.Name, size, fs, path, nullStr(deployment), now, now)
		if store.IsConstraint(err) {
			return apierr.Wrap(apierr.Conflict, err, "creating volume "+req.Name)
		}
		return internal(err, "recording volume %s", req.Name)
	})
	if err != nil {
		return nil, err
	}
	c.notify()
	// The image is made even if the caller goes away: a half-made volume
	// is worse than a late answer.
	sctx := context.WithoutCancel(ctx)
	if err := c.makeVolumeImage(sctx, req.Name, path, size, fs, deployment); err != nil {
		return nil, err
	}
	c.log.Info("volume created", "volume", req.Name, "size", volume.FormatSize(size))
	return c.Volume(ctx, req.Name)
}

// makeVolumeImage makes the image of a "creating" row and marks it ready,
// or, when that fails, removes the row (and nothing of the image is left).
func (c *Controller) makeVolumeImage(ctx context.Context, name, path string, size int64, fs, deployment string) error {
	volume.CleanTemp(path)
	cerr := volume.Create(ctx, volume.CreateOptions{Path: path, Size: size, FS: fs, Label: name})
	if apierr.Is(cerr, apierr.Conflict) {
		// The image is there: an earlier attempt made it whole and
		// crashed before recording it (the rename is its last step).
		cerr = nil
	}
	if cerr != nil {
		if derr := c.st.Tx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, `DELETE FROM volumes WHERE name = ? AND state = 'creating'`, name); err != nil {
				return err
			}
			_, err := store.AppendEvent(ctx, tx, api.EventVolumeFailed, name, map[string]any{"name": name, "error": cerr.Error()})
			return err
		}); derr != nil {
			c.log.Error("undoing a failed volume create", "volume", name, "err", derr)
		}
		c.notify()
		return fmt.Errorf("creating volume %s: %w", name, cerr)
	}
	err := c.st.Tx(ctx, func(tx *sql.Tx) error {
		if err := setVolumeState(ctx, tx, name, api.VolumeReady, size, ""); err != nil {
			return err
		}
		data := map[string]any{"name": name, "size_bytes": size, "fs": fs}
		if deployment != "" {
			data["deployment"] = deployment
		}
		_, err := store.AppendEvent(ctx, tx, api.EventVolumeCreated, name, data)
		return err
	})
	if err == nil {
		c.notify()
	}
	return err
}

// ResizeVolume grows a volume's image and filesystem. The VMs that use it
// must be stopped: while one holds it, VOLUME_IN_USE.
func (c *Controller) ResizeVolume(ctx context.Context, name string, req api.ResizeVolumeRequest) (*api.Volume, error) {
	if err := checkName("volume name", name); err != nil {
		return nil, err
	}
	size, err := requestSize(req.Size, req.SizeBytes)
	if err != nil {
		return nil, err
	}
	unlock, err := c.locks.lock(ctx, "volume:"+name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var from int64
	err = c.st.Tx(ctx, func(tx *sql.Tx) error {
		v, err := getVolume(ctx, tx, name)
		if err != nil {
			return err
		}
		if v.State != api.VolumeReady {
			return apierr.New(apierr.Conflict, "volume %s is %s", name, v.State).With("volume", name).With("state", string(v.State))
		}
		if size < v.SizeBytes {
			return apierr.New(apierr.InvalidInput, "volumes only grow: %s is smaller than volume %s's %s",
				volume.FormatSize(size), name, volume.FormatSize(v.SizeBytes)).With("field", "size").With("size_bytes", v.SizeBytes)
		}
		if size == v.SizeBytes {
			return errSkip
		}
		if err := refuseHeld(ctx, tx, name, "resizing it"); err != nil {
			return err
		}
		from = v.SizeBytes
		return setVolumeState(ctx, tx, name, api.VolumeResizing, size, "")
	})
	if errors.Is(err, errSkip) {
		return c.Volume(ctx, name)
	}
	if err != nil {
		return nil, err
	}
	c.notify()
	if err := c.growVolume(context.WithoutCancel(ctx), name, from, size); err != nil {
		return nil, err
	}
	return c.Volume(ctx, name)
}

// growVolume grows the image of a "resizing" row to size and marks it
// ready; when that fails the row is marked ready at the image's real
// size with the error (a grow that failed before the file grew changes
// nothing; one that failed after is finished by the next resize).
func (c *Controller) growVolume(ctx context.Context, name string, from, size int64) error {
	path := c.VolumePath(name)
	gerr := volume.Grow(ctx, path, size)
	err := c.st.Tx(ctx, func(tx *sql.Tx) error {
		if gerr != nil {
			cur := from
			if info, err := volume.Stat(path); err == nil && info.Size > from {
				cur = info.Size
			}
			if err := setVolumeState(ctx, tx, name, api.VolumeReady, cur, "resize failed: "+gerr.Error()); err != nil {
				return err
			}
			_, err := store.AppendEvent(ctx, tx, api.EventVolumeFailed, name, map[string]any{"name": name, "error": gerr.Error()})
			return err
		}
		if err := setVolumeState(ctx, tx, name, api.VolumeReady, size, ""); err != nil {
			return err
		}
		_, err := store.AppendEvent(ctx, tx, api.EventVolumeResized, name, map[string]any{"name": name, "from_bytes": from, "size_bytes": size})
		return err
	})
	c.notify()
	if gerr != nil {
		return fmt.Errorf("resizing volume %s: %w", name, gerr)
	}
	return err
}

// refuseHeld fails with VOLUME_IN_USE while a live VM holds the volume.
func refuseHeld(ctx context.Context, tx *sql.Tx, name, doing string) error {
	atts, err := queryAttachments(ctx, tx, "a.volume = ?", name)
	if err != nil {
		return err
	}
	var holders []string
	for _, a := range atts {
		if a.Holding {
			holders = append(holders, a.VM)
		}
	}
	if len(holders) > 0 {
		return apierr.New(apierr.VolumeInUse, "volume %s is in use by %s; stop %s before %s", name, strings.Join(holders, ", "),
			map[bool]string{true: "it", false: "them"}[len(holders) == 1], doing).
			With("volume", name).With("vms", holders)
	}
	return nil
}

// DeleteVolume deletes a volume and its image. A volume attached to any
// VM (running or not) is VOLUME_IN_USE: delete those VMs first.
func (c *Controller) DeleteVolume(ctx context.Context, name string) (*api.Volume, error) {
	if err := checkName("volume name", name); err != nil {
		return nil, err
	}
	unlock, err := c.locks.lock(ctx, "volume:"+name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	before, err := c.Volume(ctx, name)
	if err != nil {
		return nil, err
	}
	err = c.st.Tx(ctx, func(tx *sql.Tx) error {
		v, err := getVolume(ctx, tx, name)
		if err != nil {
			return err
		}
		if v.State == api.VolumeCreating || v.State == api.VolumeResizing {
			return apierr.New(apierr.Conflict, "volume %s is %s", name, v.State).With("volume", name).With("state", string(v.State))
		}
		atts, err := queryAttachments(ctx, tx, "a.volume = ?", name)
		if err != nil {
			return err
		}
		if len(atts) > 0 {
			var vms []string
			for _, a := range atts {
				vms = append(vms, a.VM)
			}
			return apierr.New(apierr.VolumeInUse, "volume %s is attached to %s; delete %s first", name, strings.Join(vms, ", "),
				map[bool]string{true: "that VM", false: "those VMs"}[len(vms) == 1]).With("volume", name).With("vms", vms)
		}
		return setVolumeState(ctx, tx, name, api.VolumeDeleting, v.SizeBytes, "")
	})
	if err != nil {
		return nil, err
	}
	c.notify()
	if err := c.removeVolume(context.WithoutCancel(ctx), name, ""); err != nil {
		return nil, err
	}
	before.State, before.Attachments = api.VolumeDeleted, []api.VolumeAttachment{}
	return before, nil
}

// removeVolume removes the image of a "deleting" row, then the row.
func (c *Controller) removeVolume(ctx context.Context, name, reason string) error {
	path := c.VolumePath(name)
	if err := volume.Remove(path); err != nil {
		return fmt.Errorf("deleting volume %s: %w", name, err)
	}
	volume.CleanTemp(path)
	err := c.st.Tx(ctx, func(tx *sql.Tx) error {
		// The foreign key is the last word: a volume with attachments is
		// not deleted, whatever the code above decided.
		if _, err := tx.ExecContext(ctx, `DELETE FROM volumes WHERE name = ?`, name); err != nil {
			if store.IsConstraint(err) {
				return apierr.Wrap(apierr.VolumeInUse, err, "deleting volume "+name)
			}
			return internal(err, "deleting volume %s", name)
		}
		data := map[string]any{"name": name}
		if reason != "" {
			data["reason"] = reason
		}
		_, err := store.AppendEvent(ctx, tx, api.EventVolumeDeleted, name, data)
		return err
	})
	if err == nil {
		c.notify()
		c.log.Info("volume deleted", "volume", name)
	}
	return err
}

// VolumeReconcileReport says what ReconcileVolumes found and did.
type VolumeReconcileReport struct {
	// Created are volumes whose interrupted create was finished (the
	// image was whole) ; Undone those whose create was undone.
	Created []string `json:"created"`
	Undone  []string `json:"undone"`
	// Resized are volumes whose interrupted grow was finished.
	Resized []string `json:"resized"`
	// Deleted are volumes whose interrupted delete was finished.
	Deleted []string `json:"deleted"`
}

// ReconcileVolumes finishes or undoes the volume operations a crash
// interrupted: a create whose image is whole is recorded, one whose image
// is not is undone (temporary files removed, row deleted); a grow is run
// again to its recorded size; a delete is finished. Reconcile calls it
// before it resumes VMs, which may wait for these volumes.
func (c *Controller) ReconcileVolumes(ctx context.Context) (*VolumeReconcileReport, error) {
	rep := &VolumeReconcileReport{}
	var vs []volumeRow
	if err := c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		vs, err = listVolumes(ctx, tx, "state != 'ready'")
		return err
	}); err != nil {
		return rep, err
	}
	for _, v := range vs {
		unlock, err := c.locks.lock(ctx, "volume:"+v.Name)
		if err != nil {
			return rep, err
		}
		log := c.log.With("volume", v.Name)
		switch v.State {
		case api.VolumeCreating:
			if _, serr := volume.Stat(v.Path); serr == nil {
				err = c.makeVolumeImage(ctx, v.Name, v.Path, v.SizeBytes, v.FS, v.Deployment)
				if err == nil {
					rep.Created = append(rep.Created, v.Name)
				}
			} else {
				volume.CleanTemp(v.Path)
				err = c.st.Tx(ctx, func(tx *sql.Tx) error {
					if _, err := tx.ExecContext(ctx, `DELETE FROM volumes WHERE name = ? AND state = 'creating'`, v.Name); err != nil {
						return err
					}
					_, err := store.AppendEvent(ctx, tx, api.EventVolumeFailed, v.Name,
						map[string]any{"name": v.Name, "error": "volantd stopped while the volume was being created; the create was undone"})
					return err
				})
				if err == nil {
					c.notify()
					rep.Undone = append(rep.Undone, v.Name)
				}
			}
		case api.VolumeResizing:
			from := v.SizeBytes
			if info, serr := volume.Stat(v.Path); serr == nil {
				from = info.Size
			}
			if err = c.growVolume(ctx, v.Name, from, v.SizeBytes); err == nil {
				rep.Resized = append(rep.Resized, v.Name)
			}
		case api.VolumeDeleting:
			if err = c.removeVolume(ctx, v.Name, "delete finished after a restart"); err == nil {
				rep.Deleted = append(rep.Deleted, v.Name)
			}
		}
		unlock()
		if err != nil {
			log.Warn("reconcile: finishing a volume operation", "state", v.State, "err", err)
		}
	}
	return rep, nil
}

// checkMounts validates the volumes of a create request.
func checkMounts(ms []api.VolumeMount) error {
	if len(ms) > bootargs.MaxVolumes {
		return apierr.New(apierr.InvalidInput, "%d volumes; a VM takes at most %d", len(ms), bootargs.MaxVolumes).With("field", "volumes")
	}
	seen := map[string]bool{}
	for i, m := range ms {
		field := fmt.Sprintf("volumes[%d]", i)
		if err := checkName("volume name", m.Volume); err != nil {
			return apierr.From(err).With("field", field+".volume")
		}
		if err := bootargs.CheckMountPath(m.Path); err != nil {
			return apierr.New(apierr.InvalidInput, "%s: %v", field, err).With("field", field+".path")
		}
		if seen["v:"+m.Volume] {
			return apierr.New(apierr.InvalidInput, "volume %s is given twice", m.Volume).With("field", field+".volume")
		}
		if seen["p:"+m.Path] {
			return apierr.New(apierr.InvalidInput, "two volumes are mounted at %s", m.Path).With("field", field+".path")
		}
		seen["v:"+m.Volume], seen["p:"+m.Path] = true, true
	}
	return nil
}

// conflictingHolders returns the live VMs other than vm that hold a
// volume in a way that conflicts with vm using it (readonly says how):
// a writer excludes everyone, a reader excludes writers.
func conflictingHolders(ctx context.Context, tx *sql.Tx, vm, vol string, readonly bool) ([]string, error) {
	atts, err := queryAttachments(ctx, tx, "a.volume = ? AND a.vm != ?", vol, vm)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range atts {
		if a.Holding && (!readonly || !a.ReadOnly) {
			out = append(out, a.VM)
		}
	}
	return out, nil
}

func volumeInUse(vm, vol string, readonly bool, holders []string) error {
	how := "read-write"
	if readonly {
		how = "read-only"
	}
	return apierr.New(apierr.VolumeInUse, "volume %s is held by %s; %s cannot use it %s while %s (one writer at a time)",
		vol, strings.Join(holders, ", "), vm, how, map[bool]string{true: "that VM runs", false: "those VMs run"}[len(holders) == 1]).
		With("volume", vol).With("vm", vm).With("held_by", holders)
}

// attachVolumesTx records that vm uses ms, in the transaction that
// creates vm: each volume must exist and be ready, and no live VM may hold
// it in a conflicting way. It appends volume.attached events.
func attachVolumesTx(ctx context.Context, tx *sql.Tx, vm string, ms []api.VolumeMount) error {
	now := store.FormatTime(time.Now())
	for i, m := range ms {
		v, err := getVolume(ctx, tx, m.Volume)
		if err != nil {
			return err
		}
		if v.State != api.VolumeReady {
			return apierr.New(apierr.Conflict, "volume %s is %s", v.Name, v.State).With("volume", v.Name).With("state", string(v.State))
		}
		holders, err := conflictingHolders(ctx, tx, vm, m.Volume, m.ReadOnly)
		if err != nil {
			return err
		}
		if len(holders) > 0 {
			return volumeInUse(vm, m.Volume, m.ReadOnly, holders)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO volume_attachments (vm, volume, idx, path, readonly, claimed, created_at) VALUES (?, ?, ?, ?, ?, 0, ?)`,
			vm, m.Volume, i, m.Path, m.ReadOnly, now); err != nil {
			return internal(err, "attaching volume %s to %s", m.Volume, vm)
		}
		if _, err := store.AppendEvent(ctx, tx, api.EventVolumeAttached, m.Volume,
			map[string]any{"name": m.Volume, "vm": vm, "path": m.Path, "readonly": m.ReadOnly}); err != nil {
			return err
		}
	}
	return nil
}

// detachVolumesTx appends volume.detached for each of vm's volumes, in the
// transaction that deletes vm (its attachments go with its row).
func detachVolumesTx(ctx context.Context, tx *sql.Tx, vm string) error {
	atts, err := queryAttachments(ctx, tx, "a.vm = ?", vm)
	if err != nil {
		return err
	}
	for _, a := range atts {
		if _, err := store.AppendEvent(ctx, tx, api.EventVolumeDetached, a.Volume, map[string]any{"name": a.Volume, "vm": vm}); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM volume_attachments WHERE vm = ?`, vm); err != nil {
		return internal(err, "detaching the volumes of %s", vm)
	}
	return nil
}

// vmVolumes are the volumes of a VM, in disk order.
func (c *Controller) vmVolumes(ctx context.Context, vm string) ([]attachmentRow, error) {
	var atts []attachmentRow
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		atts, err = queryAttachments(ctx, tx, "a.vm = ?", vm)
		return err
	})
	return atts, err
}

// stepVolumes claims the VM's volumes before it starts: in one
// transaction it checks that each is ready, that its image exists, and
// that no other live VM holds it in a conflicting way (VOLUME_IN_USE),
// then marks the VM's attachments claimed. Re-running it after a crash
// claims again what is claimed already.
func (c *Controller) stepVolumes(ctx context.Context, name string) error {
	return c.st.Tx(ctx, func(tx *sql.Tx) error {
		atts, err := queryAttachments(ctx, tx, "a.vm = ?", name)
		if err != nil || len(atts) == 0 {
			return err
		}
		for _, a := range atts {
			v, err := getVolume(ctx, tx, a.Volume)
			if err != nil {
				return err
			}
			if v.State != api.VolumeReady {
				return apierr.New(apierr.Conflict, "volume %s is %s", v.Name, v.State).With("volume", v.Name).With("state", string(v.State))
			}
			if _, err := volume.Stat(v.Path); err != nil {
				return fmt.Errorf("volume %s: %w", v.Name, err)
			}
			holders, err := conflictingHolders(ctx, tx, name, a.Volume, a.ReadOnly)
			if err != nil {
				return err
			}
			if len(holders) > 0 {
				return volumeInUse(name, a.Volume, a.ReadOnly, holders)
			}
		}
		_, err = tx.ExecContext(ctx, `UPDATE volume_attachments SET claimed = 1 WHERE vm = ? AND claimed = 0`, name)
		return internal(err, "claiming the volumes of %s", name)
	})
}

// launchVolumes are a VM's volumes as its launch spec gives them.
func launchVolumes(atts []attachmentRow) []launch.Volume {
	var out []launch.Volume
	for _, a := range atts {
		out = append(out, launch.Volume{File: a.File, Format: a.Format, Path: a.Path, ReadOnly: a.ReadOnly})
	}
	return out
}

// checkVolumesExist fails with NOT_FOUND for a volume that does not exist,
// before a create plans anything.
func (c *Controller) checkVolumesExist(ctx context.Context, ms []api.VolumeMount) ([]launch.Volume, error) {
	var out []launch.Volume
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		for _, m := range ms {
			v, err := getVolume(ctx, tx, m.Volume)
			if err != nil {
				return err
			}
			out = append(out, launch.Volume{File: v.Path, Format: v.Format, Path: m.Path, ReadOnly: m.ReadOnly})
		}
		return nil
	})
	return out, err
}

// mountsOf are the API form of a VM's volumes.
func mountsOf(atts []attachmentRow, vm string) []api.VolumeMount {
	var out []api.VolumeMount
	for _, a := range atts {
		if a.VM == vm {
			out = append(out, api.VolumeMount{Volume: a.Volume, Path: a.Path, ReadOnly: a.ReadOnly})
		}
	}
	return out
}

// Volume templates
//
// A deployment's volume template NAME gives replica <deployment>-<i> the
// volume NAME-<i>, made (with the deployment recorded on it) when the
// replica is first created and reused whenever replica i is created
// again: after a crash, and after a scale-down (which keeps the volume)
// and a scale-up. Deleting the deployment keeps the volumes too; they are
// deleted like any other volume.

// maxTemplateName is the longest template name: NAME-<index> must be a
// valid volume name for the largest index.
var maxTemplateName = names.MaxLen - 1 - len(fmt.Sprint(api.MaxReplicas))

// TemplateVolume is the name of replica i's volume from template name.
func TemplateVolume(name string, i int) string { return fmt.Sprintf("%s-%d", name, i) }

// checkTemplates validates a deployment's volume templates and returns
// them with their sizes in bytes.
func checkTemplates(ts []api.VolumeTemplate) ([]api.VolumeTemplate, error) {
	if len(ts) > bootargs.MaxVolumes {
		return nil, apierr.New(apierr.InvalidInput, "%d volume templates; a VM takes at most %d volumes", len(ts), bootargs.MaxVolumes).
			With("field", "volume_templates")
	}
	seen := map[string]bool{}
	out := make([]api.VolumeTemplate, 0, len(ts))
	for i, t := range ts {
		field := fmt.Sprintf("volume_templates[%d]", i)
		if err := checkName("volume template name", t.Name); err != nil {
			return nil, apierr.From(err).With("field", field+".name")
		}
		if len(t.Name) > maxTemplateName {
			return nil, apierr.New(apierr.InvalidInput, "volume template name %q is longer than %d characters (its volumes are named %s-<index>)",
				t.Name, maxTemplateName, t.Name).With("field", field+".name")
		}
		size, err := requestSize(t.Size, t.SizeBytes)
		if err != nil {
			return nil, apierr.From(err).With("field", field+".size")
		}
		if t.FS == "" {
			t.FS = volume.DefaultFS
		}
		if err := volume.CheckFS(t.FS); err != nil {
			return nil, apierr.From(err).With("field", field+".fs")
		}
		if err := bootargs.CheckMountPath(t.Path); err != nil {
			return nil, apierr.New(apierr.InvalidInput, "%s: %v", field, err).With("field", field+".path")
		}
		if seen["n:"+t.Name] || seen["p:"+t.Path] {
			return nil, apierr.New(apierr.InvalidInput, "%s: name %s or path %s is given twice", field, t.Name, t.Path).With("field", field)
		}
		seen["n:"+t.Name], seen["p:"+t.Path] = true, true
		out = append(out, api.VolumeTemplate{Name: t.Name, SizeBytes: size, Size: volume.FormatSize(size), Path: t.Path, FS: t.FS})
	}
	return out, nil
}

// replicaVolumes makes sure replica i of deployment has its template
// volumes and returns the mounts for its create request. A volume of that
// name that another deployment (or no deployment) made is CONFLICT: the
// replica does not take someone else's data.
func (c *Controller) replicaVolumes(ctx context.Context, deployment string, i int, ts []api.VolumeTemplate) ([]api.VolumeMount, error) {
	var out []api.VolumeMount
	for _, t := range ts {
		name := TemplateVolume(t.Name, i)
		v, err := c.Volume(ctx, name)
		if apierr.Is(err, apierr.NotFound) {
			v, err = c.createVolume(ctx, api.CreateVolumeRequest{Name: name, SizeBytes: t.SizeBytes, FS: t.FS}, deployment)
			if apierr.Is(err, apierr.Conflict) {
				v, err = c.Volume(ctx, name) // made meanwhile
			}
		}
		if err != nil {
			return nil, fmt.Errorf("volume %s of replica %s: %w", name, ReplicaName(deployment, i), err)
		}
		if v.Deployment != deployment {
			return nil, apierr.New(apierr.Conflict, "volume %s exists and is not deployment %s's; its replica %s would take it",
				name, deployment, ReplicaName(deployment, i)).With("volume", name).With("deployment", deployment)
		}
		out = append(out, api.VolumeMount{Volume: name, Path: t.Path})
	}
	return out, nil
}
