package controller

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/names"
	"github.com/volantvm/volant/lib/store"
)

// MaxDeploymentName is the longest deployment name: its replicas are named
// <name>-<index> and must fit names.MaxLen with the largest index.
var MaxDeploymentName = names.MaxLen - 1 - len(strconv.Itoa(api.MaxReplicas))

type deploymentRow struct {
	Name   string
	Plugin string
	// PluginVersion is the version new replicas run.
	PluginVersion   string
	Replicas        int
	Current         int
	Resources       api.Resources
	VolumeTemplates []api.VolumeTemplate
	FromSnapshot    string
	Inputs          *api.InputsSummary // names; the values are sealed in deployment_inputs
	Error           string
	CreatedAt       time.Time
	UpdatedAt       time.Time
}

type deploymentConfig struct {
	Resources       api.Resources        `json:"resources"`
	VolumeTemplates []api.VolumeTemplate `json:"volume_templates,omitempty"`
	FromSnapshot    string               `json:"from_snapshot,omitempty"`
	Inputs          *api.InputsSummary   `json:"inputs,omitempty"`
}

const deploymentColumns = `name, plugin, replicas, current, config, error, created_at, updated_at, plugin_version`

func scanDeployment(r rowScanner) (deploymentRow, error) {
	var d deploymentRow
	var cfg sql.NullString
	var created, updated string
	if err := r.Scan(&d.Name, &d.Plugin, &d.Replicas, &d.Current, &cfg, &d.Error, &created, &updated, &d.PluginVersion); err != nil {
		return d, err
	}
	if cfg.Valid {
		var c deploymentConfig
		if err := json.Unmarshal([]byte(cfg.String), &c); err != nil {
			return d, fmt.Errorf("deployment %s config: %w", d.Name, err)
		}
		d.Resources, d.VolumeTemplates, d.FromSnapshot, d.Inputs = c.Resources, c.VolumeTemplates, c.FromSnapshot, c.Inputs
	}
	var err error
	if d.CreatedAt, err = store.ParseTime(created); err != nil {
		return d, err
	}
	d.UpdatedAt, err = store.ParseTime(updated)
	return d, err
}

func getDeployment(ctx context.Context, q querier, name string) (deploymentRow, error) {
	d, err := scanDeployment(q.QueryRowContext(ctx, `SELECT `+deploymentColumns+` FROM deployments WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return d, apierr.New(apierr.NotFound, "no deployment named %s", name).With("deployment", name)
	}
	if err != nil {
		return d, fmt.Errorf("reading deployment %s: %w", name, err)
	}
	return d, nil
}

func listDeployments(ctx context.Context, q querier) ([]deploymentRow, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+deploymentColumns+` FROM deployments ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("listing deployments: %w", err)
	}
	defer rows.Close()
	var out []deploymentRow
	for rows.Next() {
		d, err := scanDeployment(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// replicaIndex returns i for a VM named <deployment>-<i>, or 0.
func replicaIndex(deployment, vm string) int {
	rest, ok := strings.CutPrefix(vm, deployment+"-")
	if !ok {
		return 0
	}
	i, err := strconv.Atoi(rest)
	if err != nil || i < 1 || strconv.Itoa(i) != rest {
		return 0
	}
	return i
}

// ReplicaName is the name of a deployment's i-th replica (from 1).
func ReplicaName(deployment string, i int) string { return deployment + "-" + strconv.Itoa(i) }

func (c *Controller) deploymentAPI(ctx context.Context, q querier, d deploymentRow) (api.Deployment, error) {
	out := api.Deployment{Name: d.Name, Plugin: d.Plugin, PluginVersion: d.PluginVersion, Replicas: d.Replicas, Current: d.Current, Resources: d.Resources,
		VolumeTemplates: d.VolumeTemplates, FromSnapshot: d.FromSnapshot, Inputs: d.Inputs, Error: d.Error, CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt, VMs: []string{}}
	vms, err := listVMs(ctx, q, api.VMFilter{Deployment: d.Name})
	if err != nil {
		return out, err
	}
	sort.Slice(vms, func(i, j int) bool { return replicaIndex(d.Name, vms[i].Name) < replicaIndex(d.Name, vms[j].Name) })
	for _, v := range vms {
		out.VMs = append(out.VMs, v.Name)
	}
	if out.Rollout, err = c.rolloutAPI(ctx, q, d); err != nil {
		return out, err
	}
	return out, c.deploymentPorts(ctx, q, &out, vms)
}

// ListDeployments returns the deployments by name.
func (c *Controller) ListDeployments(ctx context.Context) ([]api.Deployment, error) {
	out := []api.Deployment{}
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		ds, err := listDeployments(ctx, tx)
		if err != nil {
			return err
		}
		for _, d := range ds {
			a, err := c.deploymentAPI(ctx, tx, d)
			if err != nil {
				return err
			}
			out = append(out, a)
		}
		return nil
	})
	return out, err
}

// Deployment returns one deployment.
func (c *Controller) Deployment(ctx context.Context, name string) (*api.Deployment, error) {
	var out api.Deployment
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		d, err := getDeployment(ctx, tx, name)
		if err != nil {
			return err
		}
		out, err = c.deploymentAPI(ctx, tx, d)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

func checkDeploymentName(name string) error {
	if err := checkName("deployment name", name); err != nil {
		return err
	}
	if len(name) > MaxDeploymentName {
		return apierr.New(apierr.InvalidInput, "deployment name %q is longer than %d characters (its replicas are named %s-<index>)",
			name, MaxDeploymentName, name).With("field", "name")
	}
	return nil
}

func checkReplicas(n int) error {
	if n < 0 || n > api.MaxReplicas {
		return apierr.New(apierr.InvalidInput, "replicas %d is not between 0 and %d", n, api.MaxReplicas).With("field", "replicas")
	}
	return nil
}

// CreateDeployment records a deployment; the reconciler creates its
// replicas in the background.
func (c *Controller) CreateDeployment(ctx context.Context, req api.CreateDeploymentRequest) (*api.Deployment, error) {
	if err := checkDeploymentName(req.Name); err != nil {
		return nil, err
	}
	if err := checkReplicas(req.Replicas); err != nil {
		return nil, err
	}
	unlockSnap, err := c.deploymentSnapshot(ctx, &req)
	if err != nil {
		return nil, err
	}
	defer unlockSnap()
	p, m, err := c.usablePlugin(ctx, req.Plugin)
	if err != nil {
		return nil, err
	}
	if req.FromSnapshot != "" && req.Inputs != nil {
		return nil, apierr.New(apierr.InvalidInput, "replicas from a snapshot run the snapshot's workload: give no inputs").With("field", "from_snapshot")
	}
	if err := checkWorkload(api.CreateVMRequest{Inputs: req.Inputs}); err != nil {
		return nil, err
	}
	if req.FromSnapshot == "" {
		if err := checkSecrets(m, p.Name, req.Inputs); err != nil {
			return nil, err
		}
	}
	var sealed sealedInputs
	if req.Inputs != nil {
		if _, sealed, err = c.sealInputs(deploymentOwner(req.Name), req.Inputs); err != nil {
			return nil, err
		}
	}
	ports, err := c.checkPorts(ctx, "deployment", req.Name, req.Ports, m.Network == nil || m.Network.Mode != "none")
	if err != nil {
		return nil, err
	}
	res := api.Resources{CPUCores: m.Resources.CPUCores, MemoryMB: m.Resources.MemoryMB}
	if r := req.Resources; r != nil {
		if r.CPUCores != 0 {
			res.CPUCores = r.CPUCores
		}
		if r.MemoryMB != 0 {
			res.MemoryMB = r.MemoryMB
		}
	}
	if err := validateCreate(api.CreateVMRequest{Name: ReplicaName(req.Name, 1), Plugin: req.Plugin, CPUCores: res.CPUCores, MemoryMB: res.MemoryMB}); err != nil {
		return nil, err
	}
	templates, err := checkTemplates(req.VolumeTemplates)
	if err != nil {
		return nil, err
	}
	cfg, _ := json.Marshal(deploymentConfig{Resources: res, VolumeTemplates: templates, FromSnapshot: req.FromSnapshot, Inputs: api.SummarizeInputs(req.Inputs)})
	now := store.FormatTime(time.Now())
	err = c.st.Tx(ctx, func(tx *sql.Tx) error {
		if _, err := getDeployment(ctx, tx, req.Name); err == nil {
			return apierr.New(apierr.Conflict, "a deployment named %s exists already", req.Name).With("deployment", req.Name)
		}
		// Replicas that would collide with VMs outside the deployment.
		var clash sql.NullString
		if err := tx.QueryRowContext(ctx, `SELECT min(id) FROM vms WHERE id LIKE ? ESCAPE '\' AND (deployment IS NULL OR deployment != ?)`,
			strings.NewReplacer("_", `\_`, "%", `\%`).Replace(req.Name)+"-%", req.Name).Scan(&clash); err != nil {
			return internal(err, "checking replica names")
		}
		if clash.Valid && replicaIndex(req.Name, clash.String) > 0 {
			return apierr.New(apierr.Conflict, "VM %s exists and is not part of deployment %s; its replicas would take that name", clash.String, req.Name).
				With("deployment", req.Name).With("vm", clash.String)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO deployments (name, plugin, plugin_version, replicas, current, config, error, created_at, updated_at) VALUES (?, ?, ?, ?, 0, ?, '', ?, ?)`,
			req.Name, p.Name, p.Version, req.Replicas, string(cfg), now, now); err != nil {
			return internal(err, "recording deployment %s", req.Name)
		}
		if err := insertPorts(ctx, tx, "deployment", req.Name, ports); err != nil {
			return err
		}
		if req.Inputs != nil {
			if _, err := tx.ExecContext(ctx, `INSERT INTO deployment_inputs (deployment, key_id, sealed) VALUES (?, ?, ?)`,
				req.Name, sealed.keyID, sealed.sealed); err != nil {
				return internal(err, "keeping the sealed inputs of deployment %s", req.Name)
			}
		}
		_, err := store.AppendEvent(ctx, tx, api.EventDeploymentCreated, req.Name, map[string]any{"name": req.Name, "plugin": p.Name, "plugin_version": p.Version, "replicas": req.Replicas})
		return err
	})
	if err != nil {
		return nil, err
	}
	c.notify()
	c.kickDeployments()
	return c.Deployment(ctx, req.Name)
}

// ScaleDeployment sets the desired replica count; the reconciler creates
// or deletes (highest index first) replicas in the background. Replicas
// deleted by a scale-down keep their template volumes, which the replicas
// of a later scale-up of the same index use again.
func (c *Controller) ScaleDeployment(ctx context.Context, name string, replicas int) (*api.Deployment, error) {
	if err := checkReplicas(replicas); err != nil {
		return nil, err
	}
	err := c.st.Tx(ctx, func(tx *sql.Tx) error {
		d, err := getDeployment(ctx, tx, name)
		if err != nil {
			return err
		}
		if d.Replicas == replicas {
			return nil
		}
		if _, err := tx.ExecContext(ctx, `UPDATE deployments SET replicas = ?, updated_at = ? WHERE name = ?`, replicas, store.FormatTime(time.Now()), name); err != nil {
			return internal(err, "scaling deployment %s", name)
		}
		_, err = store.AppendEvent(ctx, tx, api.EventDeploymentScaled, name, map[string]any{"name": name, "from": d.Replicas, "to": replicas})
		return err
	})
	if err != nil {
		return nil, err
	}
	// Replicas scaled away that still wait for a boot slot give it up.
	c.cancelQueuedReplicas(ctx, name, replicas)
	c.notify()
	c.kickDeployments()
	return c.Deployment(ctx, name)
}

// lockDeploymentCancelingBoots takes the deployment's lock for its
// deletion. While a reconcile pass holds the lock, it keeps ending the
// boot-slot waits of the deployment's replicas, including those of creates
// that were under way when the desired count went to zero and reach the
// gate only later, so the pass finishes instead of waiting for slots.
func (c *Controller) lockDeploymentCancelingBoots(ctx context.Context, name string) (func(), error) {
	for {
		c.cancelQueuedReplicas(ctx, name, 0)
		wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		unlock, err := c.locks.lock(wctx, "deployment:"+name)
		cancel()
		if err == nil {
			return unlock, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
	}
}

// desiredReplicas is the deployment's replica count as stored now.
func (c *Controller) desiredReplicas(ctx context.Context, name string) (int, error) {
	var n int
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		d, err := getDeployment(ctx, tx, name)
		n = d.Replicas
		return err
	})
	return n, err
}

// cancelQueuedReplicas ends the boot-slot wait of a deployment's replicas
// but the keep of lowest index.
func (c *Controller) cancelQueuedReplicas(ctx context.Context, name string, keep int) {
	var vms []vmRow
	if err := c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		vms, err = listVMs(ctx, tx, api.VMFilter{Deployment: name})
		return err
	}); err != nil {
		return
	}
	sort.Slice(vms, func(i, j int) bool { return replicaIndex(name, vms[i].Name) < replicaIndex(name, vms[j].Name) })
	for k, v := range vms {
		if k >= keep {
			c.boots.CancelWait(v.Name)
		}
	}
}

// DeleteDeployment deletes a deployment's replicas, then the deployment,
// and returns it as it was.
func (c *Controller) DeleteDeployment(ctx context.Context, name string) (*api.Deployment, error) {
	d, err := c.Deployment(ctx, name)
	if err != nil {
		return nil, err
	}
	// Before waiting for the deployment's lock: a reconcile pass may hold
	// it while its creates wait for boot slots. With the desired count at
	// zero the pass starts no more creates, and the queued ones give up.
	if err := c.st.Tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE deployments SET replicas = 0 WHERE name = ?`, name)
		return err
	}); err != nil {
		return nil, internal(err, "deleting deployment %s", name)
	}
	unlock, err := c.lockDeploymentCancelingBoots(ctx, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := c.Deployment(ctx, name); err != nil {
		return nil, err // deleted meanwhile
	}
	sctx := context.WithoutCancel(ctx)
	var vms []vmRow
	if err := c.st.Read(sctx, func(tx *sql.Tx) error {
		var err error
		vms, err = listVMs(sctx, tx, api.VMFilter{Deployment: name})
		return err
	}); err != nil {
		return nil, err
	}
	if err := c.st.Tx(sctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(sctx, `UPDATE deployments SET replicas = 0 WHERE name = ?`, name)
		return err
	}); err != nil {
		return nil, internal(err, "deleting deployment %s", name)
	}
	if errs := c.deleteReplicas(sctx, vms, "deployment deleted"); len(errs) > 0 {
		return nil, fmt.Errorf("deleting deployment %s: %w", name, errors.Join(errs...))
	}
	c.retries.forget(name)
	err = c.st.Tx(sctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(sctx, `DELETE FROM deployments WHERE name = ?`, name); err != nil {
			return internal(err, "deleting deployment %s", name)
		}
		_, err := store.AppendEvent(sctx, tx, api.EventDeploymentDeleted, name, map[string]any{"name": name})
		return err
	})
	if err != nil {
		return nil, err
	}
	c.notify()
	c.publishNow(sctx)
	d.Current = 0
	return d, nil
}

func (c *Controller) deleteReplica(ctx context.Context, name, reason string) error {
	c.boots.CancelWait(name)
	unlock, err := c.locks.lock(ctx, name)
	c.boots.Uncancel(name)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := c.readVM(ctx, name); apierr.Is(err, apierr.NotFound) {
		return nil
	}
	return c.destroy(ctx, name, reason)
}

// StopParallelism bounds how many replicas a scale-down or a deployment's
// deletion stops at once. Stopping is mostly waiting for guests to power
// off (up to StopTimeout each), so one at a time would take minutes for a
// few dozen replicas; the bound keeps the power-offs of guests that share
// the host's CPUs from all landing at once.
const StopParallelism = 8

// deleteReplicas deletes vms, highest replica index first and up to
// StopParallelism at a time, and returns what failed.
func (c *Controller) deleteReplicas(ctx context.Context, vms []vmRow, reason string) []error {
	if len(vms) == 0 {
		return nil
	}
	deployment := vms[0].Deployment
	sort.Slice(vms, func(i, j int) bool {
		return replicaIndex(deployment, vms[i].Name) > replicaIndex(deployment, vms[j].Name)
	})
	errs := make([]error, len(vms))
	var wg sync.WaitGroup
	sem := make(chan struct{}, StopParallelism)
	for i, v := range vms {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = c.deleteReplica(ctx, v.Name, reason)
		}()
	}
	wg.Wait()
	var failed []error
	for _, err := range errs {
		if err != nil {
			failed = append(failed, err)
		}
	}
	return failed
}

// runDeployments reconciles every deployment on kicks and periodically.
func (c *Controller) runDeployments(ctx context.Context) {
	t := time.NewTicker(c.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		case <-t.C:
		}
		if !c.Ready() {
			continue
		}
		c.ReconcileDeployments(ctx)
	}
}

// ReconcileDeployments makes one pass over every deployment.
func (c *Controller) ReconcileDeployments(ctx context.Context) {
	c.passes.Add(1)
	var ds []deploymentRow
	if err := c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		ds, err = listDeployments(ctx, tx)
		return err
	}); err != nil {
		c.log.Warn("deployments: listing", "err", err)
		c.passErrors.Add(1)
		return
	}
	c.log.Debug("deployments: a reconcile pass", "deployments", len(ds))
	for _, d := range ds {
		if ctx.Err() != nil {
			return
		}
		c.reconcileDeployment(ctx, d.Name)
	}
}

// reconcileDeployment keeps <name>-1..<name>-N: it deletes replicas above
// N (highest index first) and crashed or failed ones, creates the missing,
// and records how many run.
func (c *Controller) reconcileDeployment(ctx context.Context, name string) {
	unlock, err := c.locks.lock(ctx, "deployment:"+name)
	if err != nil {
		return
	}
	defer unlock()
	var d deploymentRow
	var vms []vmRow
	var ro *rolloutRow
	err = c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		if d, err = getDeployment(ctx, tx, name); err != nil {
			return err
		}
		if vms, err = listVMs(ctx, tx, api.VMFilter{Deployment: name}); err != nil {
			return err
		}
		ro, err = activeRollout(ctx, tx, name)
		return err
	})
	if err != nil {
		if !apierr.Is(err, apierr.NotFound) {
			c.log.Warn("deployments: reading", "deployment", name, "err", err)
		}
		return
	}
	log := c.log.With("deployment", name)
	var errs []string
	waiting := 0 // errs that are notes of replicas waiting out their backoff
	if ro != nil {
		var again time.Duration
		errs, again = c.rolloutPass(ctx, d, vms, *ro)
		if again > 0 && again < c.cfg.ReconcileInterval {
			time.AfterFunc(again, c.kickDeployments)
		}
	} else {
		errs, waiting = c.keepReplicas(ctx, log, d, vms)
	}
	c.recordDeployment(ctx, log, name, errs, waiting)
}

// keepReplicas is the pass of a deployment with no update under way: it
// keeps d.Replicas replicas, those of the lowest indexes, deletes the
// rest (highest index first), replaces crashed, failed and (after the
// liveness grace) unhealthy ones and creates the missing ones at the
// lowest free indexes. It returns the pass's errors and how many of
// them are notes of replicas waiting out their backoff.
func (c *Controller) keepReplicas(ctx context.Context, log *slog.Logger, d deploymentRow, vms []vmRow) (errs []string, waiting int) {
	name := d.Name
	sort.Slice(vms, func(i, j int) bool { return replicaIndex(name, vms[i].Name) < replicaIndex(name, vms[j].Name) })
	have := map[int]vmRow{}
	var extra []vmRow
	var slots []int // the indexes of the replicas to keep, then free ones up to the count
	for _, v := range vms {
		i := replicaIndex(name, v.Name)
		if i < 1 || len(slots) >= d.Replicas {
			extra = append(extra, v)
			continue
		}
		have[i] = v
		slots = append(slots, i)
	}
	for i := 1; len(slots) < d.Replicas; i++ {
		if _, ok := have[i]; !ok && !slices.Contains(slots, i) {
			slots = append(slots, i)
		}
	}
	sort.Ints(slots)
	// Scale down: everything above the desired count.
	for _, v := range extra {
		c.retries.reset(v.Name)
	}
	for _, err := range c.deleteReplicas(ctx, extra, "scaled down") {
		errs = append(errs, err.Error())
	}
	// Replace crashed and failed replicas; create missing ones; both wait
	// for their retry after a failure (retries).
	var todo []int
	for _, i := range slots {
		v, ok := have[i]
		rn := ReplicaName(name, i)
		// A replica forgets its failures once it has run (and not been
		// unhealthy) for longer than the longest wait; one that comes up
		// and crashes soon after, again and again, keeps counting, so its
		// waits grow as a crash loop's should. One replaced for its
		// health keeps counting too.
		if ok && v.State == api.VMRunning && v.Health != string(agentapi.HealthUnhealthy) && c.retries.stable(v.StartedAt) {
			c.retries.reset(rn)
		}
		failedNow, why := "", ""
		if ok && v.Step == "" && v.Desired == desireRunning && (v.State == api.VMCrashed || v.State == api.VMFailed) {
			failedNow = strings.TrimSuffix(string(v.State)+": "+v.Error, ": ")
			why = "recreating a " + string(v.State) + " replica"
		}
		// Liveness: running but unhealthy for longer than the grace.
		if ok && v.Step == "" && v.Desired == desireRunning && v.State == api.VMRunning && v.Health == string(agentapi.HealthUnhealthy) {
			if over, d := c.live.unhealthy(rn, time.Now()); over {
				failedNow = fmt.Sprintf("unhealthy for %s (liveness grace %s): %s", d.Round(time.Second), c.cfg.LivenessGrace, v.Error)
				why = "replacing a replica " + failedNow
			}
		} else {
			c.live.healthy(rn)
		}
		if failedNow != "" || !ok {
			if due, note := c.retries.due(rn, failedNow); !due {
				errs = append(errs, note)
				waiting++
				continue
			}
		}
		if failedNow != "" {
			log.Info("recreating a replica", "vm", v.Name, "state", v.State, "health", v.Health)
			c.live.healthy(rn)
			if err := c.deleteReplica(ctx, v.Name, why); err != nil {
				errs = append(errs, err.Error())
				continue
			}
			ok = false
		}
		if !ok {
			todo = append(todo, i)
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	// ReplicaParallelism bounds the replicas being prepared (row, lease,
	// tap, spec), not those queued for a boot slot or starting: a create
	// frees its place once it reaches the boot gate, so that while the
	// slots are held the next replicas are prepared and queue there, and
	// a slot freed by a healthy guest goes to a queued replica at once.
	// (Held through the start too, the bound left a freed slot idle
	// whenever the creates in flight were all still waiting for their
	// hypervisors to answer: seconds per handoff under load, bench/density.)
	sem := make(chan struct{}, c.cfg.ReplicaParallelism)
	for _, i := range todo {
		rank := slices.Index(slots, i) + 1
		rn := ReplicaName(name, i)
		wg.Add(1)
		sem <- struct{}{}
		free := sync.OnceFunc(func() { <-sem })
		forget := c.boots.OnArrival(rn, free)
		go func() {
			defer wg.Done()
			defer free()
			defer forget()
			// The deployment may have been scaled down or deleted while
			// earlier creates of this pass waited for boot slots.
			if want, err := c.desiredReplicas(ctx, name); err != nil || rank > want {
				return
			}
			req := api.CreateVMRequest{Name: rn, Plugin: pluginRef(d.Plugin, d.PluginVersion), CPUCores: d.Resources.CPUCores, MemoryMB: d.Resources.MemoryMB}
			req.FromSnapshot = d.FromSnapshot
			vols, err := c.replicaVolumes(ctx, name, i, d.VolumeTemplates)
			if err == nil && d.Inputs != nil {
				req.Inputs, err = c.deploymentInputs(ctx, name)
			}
			if err == nil {
				req.Volumes = vols
				_, err = c.createVM(ctx, req, name)
			}
			if err != nil {
				c.retries.failed(req.Name, err.Error())
				log.Warn("creating a replica", "vm", req.Name, "err", err)
				mu.Lock()
				errs = append(errs, err.Error())
				mu.Unlock()
			}
		}()
	}
	wg.Wait()

	return errs, waiting
}

// recordDeployment records how many replicas run and the pass's outcome,
// then counts the pass's errors: whoever sees them counted (the metrics)
// finds them in the deployment too.
func (c *Controller) recordDeployment(ctx context.Context, log *slog.Logger, name string, errs []string, waiting int) {
	defer c.passErrors.Add(uint64(len(errs) - waiting))
	msg := strings.Join(errs, "; ")
	err := c.st.Tx(ctx, func(tx *sql.Tx) error {
		var running int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM vms WHERE deployment = ? AND state = 'running'`, name).Scan(&running); err != nil {
			return err
		}
		cur, err := getDeployment(ctx, tx, name)
		if err != nil {
			return err
		}
		if cur.Current == running && cur.Error == msg {
			return errSkip
		}
		_, err = tx.ExecContext(ctx, `UPDATE deployments SET current = ?, error = ?, updated_at = ? WHERE name = ?`,
			running, msg, store.FormatTime(time.Now()), name)
		return err
	})
	if err == nil {
		c.notify()
	} else if !errors.Is(err, errSkip) && !apierr.Is(err, apierr.NotFound) && ctx.Err() == nil {
		log.Warn("deployments: recording", "err", err)
	}
}
