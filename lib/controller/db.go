package controller

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/store"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

// What the user asked a VM to be (vms.desired).
const (
	desireRunning = "running"
	desireStopped = "stopped"
	desireDeleted = "deleted"
)

// vmRow is one row of the vms table.
type vmRow struct {
	Name   string
	Plugin string
	// PluginVersion is the version of the plugin the VM runs.
	PluginVersion string
	Deployment    string
	IP            string
	MAC           string
	Tap           string
	State         api.VMState
	Desired       string
	Step          string
	Health        string
	Error         string
	PID           int
	CPUCores      int
	MemoryMB      int
	CreatedAt     time.Time
	StartedAt     *time.Time
	UpdatedAt     time.Time
	Supervisor    *supervise.Identity
	VMM           *supervise.Identity
	Agent         *agentapi.Status
	AgentAt       *time.Time
	KernelArgs    []string
	// Workload is the create request's override and a summary of its
	// inputs; Labels its labels.
	Workload *vmWorkload
	Labels   map[string]string
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

const vmColumns = `id, plugin, deployment, ip, mac, tap, state, desired, step, health, error, pid,
	cpu_cores, memory_mb, created_at, started_at, updated_at, supervisor, vmm, agent, agent_at, kernel_args, workload, labels, plugin_version`

type rowScanner interface{ Scan(dest ...any) error }

func scanVM(r rowScanner) (vmRow, error) {
	var v vmRow
	var dep, ip, mac, tap, started, sup, vm, agent, agentAt, kargs, work, labels sql.NullString
	var pid sql.NullInt64
	var created, updated, state string
	if err := r.Scan(&v.Name, &v.Plugin, &dep, &ip, &mac, &tap, &state, &v.Desired, &v.Step, &v.Health, &v.Error, &pid,
		&v.CPUCores, &v.MemoryMB, &created, &started, &updated, &sup, &vm, &agent, &agentAt, &kargs, &work, &labels, &v.PluginVersion); err != nil {
		return v, err
	}
	if err := unmarshalNull(work, &v.Workload); err != nil {
		return v, fmt.Errorf("vm %s workload: %w", v.Name, err)
	}
	if labels.Valid && labels.String != "" {
		if err := json.Unmarshal([]byte(labels.String), &v.Labels); err != nil {
			return v, fmt.Errorf("vm %s labels: %w", v.Name, err)
		}
	}
	v.State = api.VMState(state)
	v.Deployment, v.IP, v.MAC, v.Tap = dep.String, ip.String, mac.String, tap.String
	v.PID = int(pid.Int64)
	var err error
	if v.CreatedAt, err = store.ParseTime(created); err != nil {
		return v, err
	}
	if v.UpdatedAt, err = store.ParseTime(updated); err != nil {
		return v, err
	}
	if v.StartedAt, err = parseTimePtr(started); err != nil {
		return v, err
	}
	if v.AgentAt, err = parseTimePtr(agentAt); err != nil {
		return v, err
	}
	if err := unmarshalNull(sup, &v.Supervisor); err != nil {
		return v, fmt.Errorf("vm %s supervisor: %w", v.Name, err)
	}
	if err := unmarshalNull(vm, &v.VMM); err != nil {
		return v, fmt.Errorf("vm %s vmm: %w", v.Name, err)
	}
	if err := unmarshalNull(agent, &v.Agent); err != nil {
		return v, fmt.Errorf("vm %s agent: %w", v.Name, err)
	}
	if kargs.Valid && kargs.String != "" {
		if err := json.Unmarshal([]byte(kargs.String), &v.KernelArgs); err != nil {
			return v, fmt.Errorf("vm %s kernel_args: %w", v.Name, err)
		}
	}
	return v, nil
}

// pluginRef names the plugin version the VM runs.
func (v vmRow) pluginRef() string { return pluginRef(v.Plugin, v.PluginVersion) }

func parseTimePtr(s sql.NullString) (*time.Time, error) {
	if !s.Valid || s.String == "" {
		return nil, nil
	}
	t, err := store.ParseTime(s.String)
	if err != nil {
		return nil, err
	}
	return &t, nil
}

func unmarshalNull[T any](s sql.NullString, dst **T) error {
	if !s.Valid || s.String == "" || s.String == "null" {
		*dst = nil
		return nil
	}
	var v T
	if err := json.Unmarshal([]byte(s.String), &v); err != nil {
		return err
	}
	*dst = &v
	return nil
}

func jsonNull(v any) (sql.NullString, error) {
	if v == nil {
		return sql.NullString{}, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return sql.NullString{}, err
	}
	if string(b) == "null" {
		return sql.NullString{}, nil
	}
	return sql.NullString{String: string(b), Valid: true}, nil
}

func nullStr(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }

func timePtrStr(t *time.Time) sql.NullString {
	if t == nil {
		return sql.NullString{}
	}
	return sql.NullString{String: store.FormatTime(*t), Valid: true}
}

func getVM(ctx context.Context, q querier, name string) (vmRow, error) {
	v, err := scanVM(q.QueryRowContext(ctx, `SELECT `+vmColumns+` FROM vms WHERE id = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return v, apierr.New(apierr.NotFound, "no VM named %s", name).With("vm", name)
	}
	if err != nil {
		return v, fmt.Errorf("reading VM %s: %w", name, err)
	}
	return v, nil
}

func listVMs(ctx context.Context, q querier, f api.VMFilter) ([]vmRow, error) {
	var where []string
	var args []any
	if f.Plugin != "" {
		where, args = append(where, "plugin = ?"), append(args, f.Plugin)
	}
	if f.Deployment != "" {
		where, args = append(where, "deployment = ?"), append(args, f.Deployment)
	}
	if f.State != "" {
		where, args = append(where, "state = ?"), append(args, string(f.State))
	}
	if f.Label != "" {
		k, val, err := labelFilter(f.Label)
		if err != nil {
			return nil, err
		}
		where, args = append(where, "json_extract(labels, ?) = ?"), append(args, `$."`+k+`"`, val)
	}
	query := `SELECT ` + vmColumns + ` FROM vms`
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	rows, err := q.QueryContext(ctx, query+" ORDER BY id", args...)
	if err != nil {
		return nil, fmt.Errorf("listing VMs: %w", err)
	}
	defer rows.Close()
	var out []vmRow
	for rows.Next() {
		v, err := scanVM(rows)
		if err != nil {
			return nil, fmt.Errorf("listing VMs: %w", err)
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

func insertVM(ctx context.Context, tx *sql.Tx, v vmRow) error {
	kargs, err := jsonNull(v.KernelArgs)
	if err != nil {
		return err
	}
	if len(v.KernelArgs) == 0 {
		kargs = sql.NullString{}
	}
	work, err := jsonNull(v.Workload)
	if err != nil {
		return err
	}
	labels := sql.NullString{}
	if len(v.Labels) > 0 {
		if labels, err = jsonNull(v.Labels); err != nil {
			return err
		}
	}
	now := store.FormatTime(v.CreatedAt)
	_, err = tx.ExecContext(ctx, `INSERT INTO vms (id, plugin, plugin_version, deployment, ip, mac, tap, state, desired, step, health, error,
		cpu_cores, memory_mb, created_at, updated_at, kernel_args, workload, labels) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', '', ?, ?, ?, ?, ?, ?, ?)`,
		v.Name, v.Plugin, v.PluginVersion, nullStr(v.Deployment), nullStr(v.IP), nullStr(v.MAC), nullStr(v.Tap), string(v.State), v.Desired, v.Step,
		v.CPUCores, v.MemoryMB, now, now, kargs, work, labels)
	if err != nil {
		return fmt.Errorf("recording VM %s: %w", v.Name, err)
	}
	return nil
}

// saveVM writes the mutable columns of v.
func saveVM(ctx context.Context, tx *sql.Tx, v *vmRow) error {
	v.UpdatedAt = time.Now().UTC().Truncate(time.Millisecond)
	sup, err := jsonNull(v.Supervisor)
	if err != nil {
		return err
	}
	vm, err := jsonNull(v.VMM)
	if err != nil {
		return err
	}
	agent, err := jsonNull(v.Agent)
	if err != nil {
		return err
	}
	var pid sql.NullInt64
	if v.PID > 0 {
		pid = sql.NullInt64{Int64: int64(v.PID), Valid: true}
	}
	_, err = tx.ExecContext(ctx, `UPDATE vms SET ip = ?, mac = ?, tap = ?, state = ?, desired = ?, step = ?, health = ?, error = ?,
		pid = ?, started_at = ?, updated_at = ?, supervisor = ?, vmm = ?, agent = ?, agent_at = ? WHERE id = ?`,
		nullStr(v.IP), nullStr(v.MAC), nullStr(v.Tap), string(v.State), v.Desired, v.Step, v.Health, v.Error,
		pid, timePtrStr(v.StartedAt), store.FormatTime(v.UpdatedAt), sup, vm, agent, timePtrStr(v.AgentAt), v.Name)
	if err != nil {
		return fmt.Errorf("updating VM %s: %w", v.Name, err)
	}
	return nil
}

// vmEvent is the data of most vm.* events.
type vmEvent struct {
	Name          string         `json:"name"`
	Plugin        string         `json:"plugin,omitempty"`
	PluginVersion string         `json:"plugin_version,omitempty"`
	Deployment    string         `json:"deployment,omitempty"`
	State         api.VMState    `json:"state,omitempty"`
	IP            string         `json:"ip,omitempty"`
	PID           int            `json:"pid,omitempty"`
	Resources     *api.Resources `json:"resources,omitempty"`
	Method        string         `json:"method,omitempty"`
	Error         string         `json:"error,omitempty"`
	Health        string         `json:"health_check,omitempty"`
}

// toAPI converts a row to the API's VM.
func (v vmRow) toAPI(serialLog string) api.VM {
	out := api.VM{
		Name: v.Name, Plugin: v.Plugin, PluginVersion: v.PluginVersion, Deployment: v.Deployment, IP: v.IP, MAC: v.MAC, Tap: v.Tap,
		State: v.State, Health: agentapi.HealthState(v.Health), Step: v.Step, Error: v.Error, PID: v.PID,
		Resources: api.Resources{CPUCores: v.CPUCores, MemoryMB: v.MemoryMB},
		CreatedAt: v.CreatedAt, StartedAt: v.StartedAt, UpdatedAt: v.UpdatedAt, SerialLog: serialLog, Agent: v.Agent,
		Labels: v.Labels,
	}
	out.Workload, out.Inputs = v.workloadSummary()
	return out
}
