package controller

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/store"
)

// Rolling updates.
//
// An update is a rollouts row (revision, from, to, limits, state) written
// in the transaction that points the deployment at the new version. While
// it is under way, the deployment's reconcile pass is a rollout pass
// (rolloutPass): it sorts the replicas into new (running the target
// version) and old, and plans from those alone (planRollout), so a pass
// is idempotent and a restarted volantd simply goes on where the rows say
// the update is: it resumes, whatever it was doing when it stopped (a
// replica's create or delete that was cut short is finished or undone by
// the VM's own steps first).
//
// Replicas keep their names <deployment>-<index>: new ones take the
// lowest free indexes, so with max_surge 1 the first new replica of 1..3
// is 4, and the next ones take the indexes of the old replicas removed
// before them (3, then 2); with max_surge 0 every replica is replaced in
// its place, keeping its volume template's volumes. A replica the update
// removes first leaves the published ports' endpoints, then serves what
// it has for DrainDelay, then is deleted.

type rolloutRow struct {
	Deployment                                   string
	Revision                                     int
	FromPlugin, FromVersion, ToPlugin, ToVersion string
	MaxSurge, MaxUnavailable                     int
	DeadlineMS                                   int64
	State                                        api.RolloutState
	Reason                                       string
	StartedAt, UpdatedAt                         time.Time
	FinishedAt                                   *time.Time
}

const rolloutColumns = `deployment, revision, from_plugin, from_version, to_plugin, to_version, max_surge, max_unavailable,
	deadline_ms, state, reason, started_at, updated_at, finished_at`

func scanRollout(r rowScanner) (rolloutRow, error) {
	var o rolloutRow
	var state, started, updated string
	var finished sql.NullString
	if err := r.Scan(&o.Deployment, &o.Revision, &o.FromPlugin, &o.FromVersion, &o.ToPlugin, &o.ToVersion, &o.MaxSurge, &o.MaxUnavailable,
		&o.DeadlineMS, &state, &o.Reason, &started, &updated, &finished); err != nil {
		return o, err
	}
	o.State = api.RolloutState(state)
	var err error
	if o.StartedAt, err = store.ParseTime(started); err != nil {
		return o, err
	}
	if o.UpdatedAt, err = store.ParseTime(updated); err != nil {
		return o, err
	}
	o.FinishedAt, err = parseTimePtr(finished)
	return o, err
}

// listRollouts returns a deployment's updates, newest first (limit 0: all).
func listRollouts(ctx context.Context, q querier, name string, limit int) ([]rolloutRow, error) {
	query := `SELECT ` + rolloutColumns + ` FROM rollouts WHERE deployment = ? ORDER BY revision DESC`
	if limit > 0 {
		query += fmt.Sprintf(" LIMIT %d", limit)
	}
	rows, err := q.QueryContext(ctx, query, name)
	if err != nil {
		return nil, fmt.Errorf("reading the updates of deployment %s: %w", name, err)
	}
	defer rows.Close()
	var out []rolloutRow
	for rows.Next() {
		o, err := scanRollout(rows)
		if err != nil {
			return nil, fmt.Errorf("reading the updates of deployment %s: %w", name, err)
		}
		out = append(out, o)
	}
	return out, rows.Err()
}

// latestRollout is the deployment's newest update, or nil.
func latestRollout(ctx context.Context, q querier, name string) (*rolloutRow, error) {
	rs, err := listRollouts(ctx, q, name, 1)
	if err != nil || len(rs) == 0 {
		return nil, err
	}
	return &rs[0], nil
}

// activeRollout is the deployment's update under way, or nil.
func activeRollout(ctx context.Context, q querier, name string) (*rolloutRow, error) {
	r, err := latestRollout(ctx, q, name)
	if err != nil || r == nil || !r.State.Active() {
		return nil, err
	}
	return r, nil
}

// target is the plugin version replicas are moving to.
func (r rolloutRow) target() (plugin, version string) {
	if r.State == api.RolloutRollingBack || r.State == api.RolloutRolledBack {
		return r.FromPlugin, r.FromVersion
	}
	return r.ToPlugin, r.ToVersion
}

func (r rolloutRow) deadline() time.Duration { return time.Duration(r.DeadlineMS) * time.Millisecond }

func (r rolloutRow) toAPI() api.Rollout {
	return api.Rollout{Deployment: r.Deployment, Revision: r.Revision,
		From: pluginRef(r.FromPlugin, r.FromVersion), To: pluginRef(r.ToPlugin, r.ToVersion),
		MaxSurge: r.MaxSurge, MaxUnavailable: r.MaxUnavailable, DeadlineMS: r.DeadlineMS, State: r.State, Reason: r.Reason,
		StartedAt: r.StartedAt, UpdatedAt: r.UpdatedAt, FinishedAt: r.FinishedAt}
}

// replicaHealthy says whether a replica counts as available: running,
// its health check passing, and not on its way out.
func replicaHealthy(v vmRow) bool {
	return v.State == api.VMRunning && v.Health == string(agentapi.HealthHealthy) && v.Desired == desireRunning
}

// progress counts the replicas for the API.
func rolloutProgress(r rolloutRow, replicas int, vms []vmRow) *api.RolloutProgress {
	tp, tv := r.target()
	p := &api.RolloutProgress{Target: pluginRef(tp, tv), Replicas: replicas}
	for _, v := range vms {
		if v.Desired == desireDeleted {
			continue
		}
		h := replicaHealthy(v)
		if h {
			p.Healthy++
		}
		if v.Plugin == tp && v.PluginVersion == tv {
			p.Updated++
			if h {
				p.Ready++
			}
		} else {
			p.Old++
		}
	}
	return p
}

// rolloutReplica is what planRollout knows of a replica.
type rolloutReplica struct {
	Name    string
	Index   int
	Healthy bool
}

// rolloutPlan is one pass's batch: how many new replicas to create and
// which old ones to remove; Done when there is nothing left to do.
type rolloutPlan struct {
	Create int
	Remove []string
	Done   bool
}

// planRollout is a pass's arithmetic. want is the replica count; news run
// the target version, olds do not. Old replicas that are not healthy go
// first and at once (they serve nothing); healthy ones only while at
// least want−maxUnavailable replicas stay healthy, highest index first.
// New replicas are created while there are fewer than want+maxSurge
// replicas in all and fewer than want new ones. Done: no old replica is
// left and want new ones are healthy.
func planRollout(want, maxSurge, maxUnavailable int, news, olds []rolloutReplica) rolloutPlan {
	var p rolloutPlan
	healthy := 0
	for _, r := range news {
		if r.Healthy {
			healthy++
		}
	}
	if len(olds) == 0 && healthy >= want {
		p.Done = true
		return p
	}
	var sick, well []rolloutReplica
	for _, r := range olds {
		if r.Healthy {
			well = append(well, r)
			healthy++
		} else {
			sick = append(sick, r)
		}
	}
	for _, r := range sick {
		p.Remove = append(p.Remove, r.Name)
	}
	sort.Slice(well, func(i, j int) bool { return well[i].Index > well[j].Index })
	spare := healthy - (want - maxUnavailable)
	if newHealthy := healthy - len(well); newHealthy >= want {
		spare = len(well) // enough new ones: the rest of the old go
	}
	for _, r := range well {
		if spare <= 0 {
			break
		}
		p.Remove = append(p.Remove, r.Name)
		spare--
	}
	total := len(news) + len(olds) - len(p.Remove)
	p.Create = max(0, min(want+maxSurge-total, want-len(news)))
	return p
}

// rolloutLimits fills the defaults of an update's limits and checks them.
func rolloutLimits(req api.UpdateDeploymentRequest, templates bool) (surge, unavailable int, deadline time.Duration, err error) {
	surge, unavailable = 1, 0
	if templates {
		surge = 0
	}
	if req.MaxSurge != nil {
		surge = *req.MaxSurge
	}
	if req.MaxUnavailable != nil {
		unavailable = *req.MaxUnavailable
	} else if surge == 0 {
		unavailable = 1
	}
	switch {
	case surge < 0 || surge > api.MaxReplicas:
		return 0, 0, 0, apierr.New(apierr.InvalidInput, "max_surge %d is not between 0 and %d", surge, api.MaxReplicas).With("field", "max_surge")
	case unavailable < 0 || unavailable > api.MaxReplicas:
		return 0, 0, 0, apierr.New(apierr.InvalidInput, "max_unavailable %d is not between 0 and %d", unavailable, api.MaxReplicas).With("field", "max_unavailable")
	case surge == 0 && unavailable == 0:
		return 0, 0, 0, apierr.New(apierr.InvalidInput, "max_surge and max_unavailable cannot both be 0: the update could not replace anything").
			With("field", "max_unavailable")
	case templates && surge > 0:
		return 0, 0, 0, apierr.New(apierr.InvalidInput, "max_surge must be 0 for a deployment with volume templates: a replica is replaced in its place, with its index and so its volumes").
			With("field", "max_surge")
	case req.DeadlineMS < 0 || req.DeadlineMS > 86400000:
		return 0, 0, 0, apierr.New(apierr.InvalidInput, "deadline_ms %d is not between 1 and 86400000", req.DeadlineMS).With("field", "deadline_ms")
	}
	deadline = api.DefaultRolloutDeadline
	if req.DeadlineMS > 0 {
		deadline = time.Duration(req.DeadlineMS) * time.Millisecond
	}
	return surge, unavailable, deadline, nil
}

// UpdateDeployment starts a rolling update of a deployment's replicas to
// another plugin version (see api.UpdateDeploymentRequest). An update
// under way is superseded by the new one, which starts from the same
// version. Asking for the version the deployment runs, with no update
// under way, changes nothing.
func (c *Controller) UpdateDeployment(ctx context.Context, name string, req api.UpdateDeploymentRequest) (*api.Deployment, error) {
	if req.Plugin == "" {
		return nil, apierr.New(apierr.InvalidInput, "plugin is required").With("field", "plugin")
	}
	if _, err := c.Deployment(ctx, name); err != nil {
		return nil, err
	}
	p, m, err := c.usablePlugin(ctx, req.Plugin)
	if err != nil {
		return nil, err
	}
	if d, err := c.Deployment(ctx, name); err != nil {
		return nil, err
	} else if d.FromSnapshot == "" {
		in, err := c.deploymentInputs(ctx, name)
		if err != nil {
			return nil, err
		}
		if err := checkSecrets(m, p.Name, in); err != nil {
			return nil, err
		}
	}
	err = c.st.Tx(ctx, func(tx *sql.Tx) error {
		d, err := getDeployment(ctx, tx, name)
		if err != nil {
			return err
		}
		surge, unavailable, deadline, err := rolloutLimits(req, len(d.VolumeTemplates) > 0)
		if err != nil {
			return err
		}
		if d.FromSnapshot != "" {
			return apierr.New(apierr.InvalidInput, "deployment %s starts its replicas from snapshot %s, which holds its plugin version; create a deployment from another snapshot instead",
				name, d.FromSnapshot).With("field", "plugin").With("deployment", name)
		}
		if m.Network != nil && m.Network.Mode == "none" {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM ports WHERE owner_kind = 'deployment' AND owner = ?`, name).Scan(&n); err != nil {
				return internal(err, "reading the ports of deployment %s", name)
			}
			if n > 0 {
				return apierr.New(apierr.InvalidInput, "plugin %s has no network (mode none); deployment %s publishes ports", pluginRef(p.Name, p.Version), name).
					With("field", "plugin")
			}
		}
		active, err := activeRollout(ctx, tx, name)
		if err != nil {
			return err
		}
		if active == nil && d.Plugin == p.Name && d.PluginVersion == p.Version {
			return errSkip
		}
		last, err := latestRollout(ctx, tx, name)
		if err != nil {
			return err
		}
		rev := 1
		if last != nil {
			rev = last.Revision + 1
		}
		now := time.Now().UTC().Truncate(time.Millisecond)
		from := [2]string{d.Plugin, d.PluginVersion}
		if active != nil {
			// The new update starts from where the superseded one did:
			// the version that was running before it.
			from = [2]string{active.FromPlugin, active.FromVersion}
			if err := finishRollout(ctx, tx, *active, api.RolloutSuperseded, fmt.Sprintf("superseded by revision %d", rev), now); err != nil {
				return err
			}
			if _, err := store.AppendEvent(ctx, tx, api.EventRolloutSuperseded, name, map[string]any{"name": name, "revision": active.Revision, "by": rev}); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO rollouts (`+rolloutColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', ?, ?, NULL)`,
			name, rev, from[0], from[1], p.Name, p.Version, surge, unavailable, deadline.Milliseconds(), string(api.RolloutProgressing),
			store.FormatTime(now), store.FormatTime(now)); err != nil {
			return internal(err, "recording an update of deployment %s", name)
		}
		if err := pointDeployment(ctx, tx, name, p.Name, p.Version, now); err != nil {
			return err
		}
		_, err = store.AppendEvent(ctx, tx, api.EventRolloutStarted, name, map[string]any{"name": name, "revision": rev,
			"from": pluginRef(from[0], from[1]), "to": pluginRef(p.Name, p.Version), "max_surge": surge, "max_unavailable": unavailable,
			"deadline_ms": deadline.Milliseconds()})
		return err
	})
	if err != nil && !errors.Is(err, errSkip) {
		return nil, err
	}
	c.notify()
	c.kickDeployments()
	return c.Deployment(ctx, name)
}

// pointDeployment sets the version the deployment's new replicas run.
func pointDeployment(ctx context.Context, tx *sql.Tx, name, plugin, version string, now time.Time) error {
	if _, err := tx.ExecContext(ctx, `UPDATE deployments SET plugin = ?, plugin_version = ?, updated_at = ? WHERE name = ?`,
		plugin, version, store.FormatTime(now), name); err != nil {
		return internal(err, "updating deployment %s", name)
	}
	return nil
}

// finishRollout ends an update in state.
func finishRollout(ctx context.Context, tx *sql.Tx, r rolloutRow, state api.RolloutState, reason string, now time.Time) error {
	if reason == "" {
		reason = r.Reason
	}
	if _, err := tx.ExecContext(ctx, `UPDATE rollouts SET state = ?, reason = ?, updated_at = ?, finished_at = ? WHERE deployment = ? AND revision = ?`,
		string(state), reason, store.FormatTime(now), store.FormatTime(now), r.Deployment, r.Revision); err != nil {
		return internal(err, "recording the end of update %d of deployment %s", r.Revision, r.Deployment)
	}
	return nil
}

// rollBack turns an update under way around: the deployment points at
// the version it came from again, and the passes move the replicas back.
func (c *Controller) rollBack(ctx context.Context, name string, revision int, reason string) error {
	err := c.st.Tx(ctx, func(tx *sql.Tx) error {
		r, err := activeRollout(ctx, tx, name)
		if err != nil {
			return err
		}
		if r == nil || r.Revision != revision || r.State != api.RolloutProgressing {
			return errSkip
		}
		now := time.Now().UTC().Truncate(time.Millisecond)
		if _, err := tx.ExecContext(ctx, `UPDATE rollouts SET state = ?, reason = ?, updated_at = ? WHERE deployment = ? AND revision = ?`,
			string(api.RolloutRollingBack), reason, store.FormatTime(now), name, revision); err != nil {
			return internal(err, "rolling back update %d of deployment %s", revision, name)
		}
		if err := pointDeployment(ctx, tx, name, r.FromPlugin, r.FromVersion, now); err != nil {
			return err
		}
		_, err = store.AppendEvent(ctx, tx, api.EventRolloutRollingBack, name, map[string]any{"name": name, "revision": revision, "reason": reason})
		return err
	})
	if errors.Is(err, errSkip) {
		return nil
	}
	if err == nil {
		c.log.Warn("rolling back an update", "deployment", name, "revision", revision, "reason", reason)
		c.notify()
		c.kickDeployments()
	}
	return err
}

// UndoRollout rolls back the deployment's update under way, or, with none
// under way, starts an update back to the version the last complete one
// came from (with that update's limits). CONFLICT when there is nothing
// to go back to.
func (c *Controller) UndoRollout(ctx context.Context, name string) (*api.Rollout, error) {
	var active, back *rolloutRow
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		d, err := getDeployment(ctx, tx, name)
		if err != nil {
			return err
		}
		if active, err = activeRollout(ctx, tx, name); err != nil || active != nil {
			return err
		}
		rs, err := listRollouts(ctx, tx, name, 0)
		if err != nil {
			return err
		}
		for _, r := range rs {
			if r.State == api.RolloutComplete && r.ToPlugin == d.Plugin && r.ToVersion == d.PluginVersion {
				back = &r
				return nil
			}
		}
		return apierr.New(apierr.Conflict, "deployment %s has no earlier version to go back to: no complete update brought it to %s",
			name, pluginRef(d.Plugin, d.PluginVersion)).With("deployment", name)
	})
	if err != nil {
		return nil, err
	}
	if active != nil {
		if active.State == api.RolloutProgressing {
			if err := c.rollBack(ctx, name, active.Revision, "undone"); err != nil {
				return nil, err
			}
		}
		return c.Rollout(ctx, name)
	}
	surge, unav := back.MaxSurge, back.MaxUnavailable
	if _, err := c.UpdateDeployment(ctx, name, api.UpdateDeploymentRequest{Plugin: pluginRef(back.FromPlugin, back.FromVersion),
		MaxSurge: &surge, MaxUnavailable: &unav, DeadlineMS: back.DeadlineMS}); err != nil {
		return nil, err
	}
	return c.Rollout(ctx, name)
}

// Rollout returns the deployment's latest update with its progress;
// NOT_FOUND when it has had none.
func (c *Controller) Rollout(ctx context.Context, name string) (*api.Rollout, error) {
	var out *api.Rollout
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		d, err := getDeployment(ctx, tx, name)
		if err != nil {
			return err
		}
		out, err = c.rolloutAPI(ctx, tx, d)
		if err == nil && out == nil {
			err = apierr.New(apierr.NotFound, "deployment %s has had no update", name).With("deployment", name)
		}
		return err
	})
	return out, err
}

// rolloutAPI is the deployment's latest update with its progress, or nil.
func (c *Controller) rolloutAPI(ctx context.Context, q querier, d deploymentRow) (*api.Rollout, error) {
	r, err := latestRollout(ctx, q, d.Name)
	if err != nil || r == nil {
		return nil, err
	}
	vms, err := listVMs(ctx, q, api.VMFilter{Deployment: d.Name})
	if err != nil {
		return nil, err
	}
	out := r.toAPI()
	out.Progress = rolloutProgress(*r, d.Replicas, vms)
	return &out, nil
}

// RolloutHistory lists the deployment's updates, newest first.
func (c *Controller) RolloutHistory(ctx context.Context, name string) ([]api.Rollout, error) {
	out := []api.Rollout{}
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		if _, err := getDeployment(ctx, tx, name); err != nil {
			return err
		}
		rs, err := listRollouts(ctx, tx, name, 0)
		for _, r := range rs {
			out = append(out, r.toAPI())
		}
		return err
	})
	return out, err
}

// rolloutPass is the reconcile pass of a deployment with an update under
// way (the deployment's lock is held). It returns the pass's errors and
// when it wants to look again (0: on the next event).
func (c *Controller) rolloutPass(ctx context.Context, d deploymentRow, vms []vmRow, r rolloutRow) ([]string, time.Duration) {
	log := c.log.With("deployment", d.Name, "revision", r.Revision)
	tp, tv := r.target()
	now := time.Now()
	var news, olds []rolloutReplica
	var dead []vmRow
	used := map[int]bool{}
	var again time.Duration
	for _, v := range vms {
		i := replicaIndex(d.Name, v.Name)
		used[i] = true
		if v.Desired == desireDeleted {
			continue // on its way out already
		}
		isNew := v.Plugin == tp && v.PluginVersion == tv
		failed := v.Step == "" && (v.State == api.VMCrashed || v.State == api.VMFailed)
		if isNew && r.State == api.RolloutProgressing && !replicaHealthy(v) {
			why := ""
			if failed {
				why = fmt.Sprintf("replica %s (%s) %s: %s", v.Name, pluginRef(tp, tv), v.State, v.Error)
			} else if age := now.Sub(v.CreatedAt); age > r.deadline() {
				why = fmt.Sprintf("replica %s (%s) was not healthy within the deadline %s", v.Name, pluginRef(tp, tv), r.deadline())
				if v.Error != "" {
					why += ": " + v.Error
				}
			} else if left := r.deadline() - age; again == 0 || left < again {
				again = left + 10*time.Millisecond
			}
			if why != "" {
				if err := c.rollBack(ctx, d.Name, r.Revision, why); err != nil {
					return []string{err.Error()}, 0
				}
				return nil, 0 // the rolled-back pass comes with the kick
			}
		}
		if failed {
			dead = append(dead, v)
			continue
		}
		rr := rolloutReplica{Name: v.Name, Index: i, Healthy: replicaHealthy(v)}
		if isNew {
			news = append(news, rr)
		} else {
			olds = append(olds, rr)
		}
	}
	var errs []string
	// Crashed or failed replicas are replaced by new ones, not restarted.
	for _, v := range dead {
		if err := c.retireReplica(ctx, r, v.Name, false, "rolling update: "+string(v.State)); err != nil {
			errs = append(errs, err.Error())
		}
	}
	plan := planRollout(d.Replicas, r.MaxSurge, r.MaxUnavailable, news, olds)
	if plan.Done && len(dead) == 0 {
		state, typ, data := api.RolloutComplete, api.EventRolloutComplete, map[string]any{"name": d.Name, "revision": r.Revision, "to": pluginRef(tp, tv)}
		if r.State == api.RolloutRollingBack {
			state, typ, data = api.RolloutRolledBack, api.EventRolloutRolledBack, map[string]any{"name": d.Name, "revision": r.Revision, "from": pluginRef(tp, tv)}
		}
		err := c.st.Tx(ctx, func(tx *sql.Tx) error {
			if err := finishRollout(ctx, tx, r, state, "", time.Now().UTC().Truncate(time.Millisecond)); err != nil {
				return err
			}
			_, err := store.AppendEvent(ctx, tx, typ, d.Name, data)
			return err
		})
		if err != nil {
			return append(errs, err.Error()), 0
		}
		log.Info("update finished", "state", state)
		c.notify()
		return errs, 0
	}
	if len(plan.Remove) > 0 || plan.Create > 0 {
		log.Info("update: a batch", "create", plan.Create, "remove", plan.Remove, "new", len(news), "old", len(olds))
	}
	healthyOld := map[string]bool{}
	for _, o := range olds {
		healthyOld[o.Name] = o.Healthy
	}
	for _, n := range plan.Remove {
		if err := c.retireReplica(ctx, r, n, healthyOld[n], "rolling update to "+pluginRef(tp, tv)); err != nil {
			errs = append(errs, err.Error())
		}
	}
	for _, n := range plan.Remove {
		delete(used, replicaIndex(d.Name, n))
	}
	for k := 0; k < plan.Create; k++ {
		i := 1
		for used[i] {
			i++
		}
		used[i] = true
		name := ReplicaName(d.Name, i)
		req := api.CreateVMRequest{Name: name, Plugin: pluginRef(tp, tv), CPUCores: d.Resources.CPUCores, MemoryMB: d.Resources.MemoryMB,
			FromSnapshot: d.FromSnapshot}
		if err := c.rolloutStep(ctx, r, "create", name, tv, false); err != nil {
			errs = append(errs, err.Error())
			break
		}
		vols, err := c.replicaVolumes(ctx, d.Name, i, d.VolumeTemplates)
		if err == nil && d.Inputs != nil {
			req.Inputs, err = c.deploymentInputs(ctx, d.Name)
		}
		if err == nil {
			req.Volumes = vols
			_, err = c.createVM(ctx, req, d.Name)
		}
		if err != nil {
			log.Warn("update: creating a replica", "vm", name, "err", err)
			errs = append(errs, err.Error())
			if r.State == api.RolloutProgressing {
				if rerr := c.rollBack(ctx, d.Name, r.Revision, fmt.Sprintf("creating replica %s (%s): %v", name, pluginRef(tp, tv), err)); rerr != nil {
					errs = append(errs, rerr.Error())
				}
				return errs, 0
			}
			c.retries.failed(name, err.Error())
			return errs, c.cfg.ReplicaBackoff
		}
	}
	return errs, again
}

// rolloutStep records a step of an update.
func (c *Controller) rolloutStep(ctx context.Context, r rolloutRow, action, vm, version string, healthy bool) error {
	return c.st.Tx(ctx, func(tx *sql.Tx) error {
		_, err := store.AppendEvent(ctx, tx, api.EventRolloutStep, r.Deployment, map[string]any{"name": r.Deployment, "revision": r.Revision,
			"action": action, "vm": vm, "version": version, "healthy": healthy})
		return err
	})
}

// retireReplica takes a replica out of its deployment for an update: out
// of the published ports' endpoints first; a replica that served
// (healthy) then keeps its connections for DrainDelay; then it is
// deleted.
func (c *Controller) retireReplica(ctx context.Context, r rolloutRow, name string, healthy bool, reason string) error {
	v, err := c.readVM(ctx, name)
	if apierr.Is(err, apierr.NotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := c.rolloutStep(ctx, r, "remove", name, v.PluginVersion, healthy); err != nil {
		return err
	}
	if healthy {
		// Out of the endpoints: desired deleted, as the delete's first
		// step records it (a crash from here on finishes the delete).
		if _, err := c.updateVM(ctx, name, func(_ *sql.Tx, v *vmRow) error {
			v.Desired, v.Step, v.State = desireDeleted, "stop", api.VMDeleting
			return nil
		}); err != nil && !apierr.Is(err, apierr.NotFound) {
			return err
		}
		c.publishNow(ctx)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(c.cfg.DrainDelay):
		}
	}
	return c.deleteReplica(ctx, name, reason)
}
