package store

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/volantvm/volant/lib/apierr"
)

// migration moves the schema from version-1 to version. Migrations are never
// edited once released: a change is a new migration appended to the list
// (ALTER TABLE ... ADD COLUMN, or create-copy-rename for what SQLite cannot
// alter), so every database reaches the same schema by the same steps.
type migration struct {
	version int
	name    string
	sql     string
}

// migrations is the schema's history, oldest first; versions are 1, 2, 3, ...
func migrations() []migration {
	return []migration{
		{1, "initial schema", schemaV1},
		{2, "volantd: desired state, steps, health and process identities", schemaV2},
		{3, "volumes and their attachments to VMs", schemaV3},
		{4, "published ports", schemaV4},
		{5, "VM workload overrides and labels; daemon settings", schemaV5},
		{6, "named API tokens with roles, stored hashed", schemaV6},
		{7, "plugin signatures", schemaV7},
		{8, "plugin versions side by side; deployment rollouts", schemaV8},
		{9, "VM inputs sealed at rest", schemaV9},
		{10, "deployment inputs sealed at rest", schemaV10},
	}
}

// LatestSchemaVersion is the schema version this build migrates databases to.
func LatestSchemaVersion() int { return len(migrations()) }

// schemaV1 is the spec's schema, with these decisions:
//
//   - STRICT tables: a value of the wrong type is an error, not a silent
//     conversion.
//   - ip_leases has a row only while an address is leased (no pre-filled pool
//     rows with a NULL vm_id): the pool is configuration, not state, and
//     deleting the row is the whole of a release. The row records the pool's
//     subnet and gateway it was leased under, and ip_num (the IPv4 address as
//     an integer) so the lowest free address is found with an index instead
//     of text order ("192.168.127.100" < "192.168.127.99").
//   - ip_leases.vm_id has no foreign key to vms: volant-ipam leases for names
//     that only a shell script knows, and volantd leases before it creates
//     the vms row. volantd deletes a VM's lease in the transaction that
//     deletes the VM, and `gc` with the live names frees strays.
//     vm_id and mac are UNIQUE: one lease per VM, one VM per MAC.
//   - events.id is AUTOINCREMENT: ids are never reused, even after the newest
//     events are deleted, so an SSE client resuming from an id never skips
//     or repeats one. Writers are serialized, so ids also commit in order.
const schemaV1 = `
CREATE TABLE plugins (
	name       TEXT PRIMARY KEY,
	version    TEXT NOT NULL,
	runtime    TEXT NOT NULL,
	manifest   TEXT NOT NULL CHECK (json_valid(manifest)),
	enabled    INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
	created_at TEXT NOT NULL,
	updated_at TEXT NOT NULL
) STRICT;

CREATE TABLE deployments (
	name       TEXT PRIMARY KEY,
	plugin     TEXT NOT NULL REFERENCES plugins(name) ON UPDATE CASCADE ON DELETE RESTRICT,
	replicas   INTEGER NOT NULL CHECK (replicas >= 0),
	current    INTEGER NOT NULL DEFAULT 0 CHECK (current >= 0),
	config     TEXT CHECK (config IS NULL OR json_valid(config)),
	created_at TEXT NOT NULL,
	updated_at TEXT NOT NULL
) STRICT;

CREATE TABLE vms (
	id         TEXT PRIMARY KEY,
	plugin     TEXT NOT NULL REFERENCES plugins(name) ON UPDATE CASCADE ON DELETE RESTRICT,
	deployment TEXT REFERENCES deployments(name) ON UPDATE CASCADE ON DELETE SET NULL,
	ip         TEXT,
	mac        TEXT,
	state      TEXT NOT NULL,
	pid        INTEGER,
	cpu_cores  INTEGER NOT NULL CHECK (cpu_cores > 0),
	memory_mb  INTEGER NOT NULL CHECK (memory_mb > 0),
	created_at TEXT NOT NULL,
	started_at TEXT,
	updated_at TEXT NOT NULL
) STRICT;
CREATE INDEX vms_plugin ON vms(plugin);
CREATE INDEX vms_deployment ON vms(deployment) WHERE deployment IS NOT NULL;

CREATE TABLE ip_leases (
	ip        TEXT PRIMARY KEY,
	ip_num    INTEGER NOT NULL UNIQUE CHECK (ip_num BETWEEN 0 AND 4294967295),
	vm_id     TEXT NOT NULL UNIQUE,
	mac       TEXT NOT NULL UNIQUE,
	subnet    TEXT NOT NULL,
	gateway   TEXT NOT NULL,
	leased_at TEXT NOT NULL
) STRICT;

CREATE TABLE events (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	type        TEXT NOT NULL,
	resource_id TEXT NOT NULL DEFAULT '',
	data        TEXT CHECK (data IS NULL OR json_valid(data)),
	timestamp   TEXT NOT NULL
) STRICT;
`

// schemaV2 adds what volantd needs to tell the truth across restarts:
//
//   - vms.desired: what the user asked for (running, stopped, deleted),
//     apart from vms.state, what is; reconciliation moves state towards it.
//   - vms.step: the step of a multi-step operation in progress (empty when
//     none), so a restarted volantd resumes an interrupted create or delete.
//   - vms.health, vms.error: kestrel's verdict and the last failure.
//   - vms.supervisor, vms.vmm: the identities (pid, start time, boot id) of
//     the VM's `volant-launch run` process and its hypervisor, checked when
//     volantd adopts running VMs after a restart.
//   - vms.agent, vms.agent_at: kestrel's last status report.
//   - vms.tap, vms.kernel_args: the host tap and extra guest kernel words.
//   - deployments.error: the last reconcile failure.
const schemaV2 = `
ALTER TABLE vms ADD COLUMN desired TEXT NOT NULL DEFAULT 'running';
ALTER TABLE vms ADD COLUMN step TEXT NOT NULL DEFAULT '';
ALTER TABLE vms ADD COLUMN health TEXT NOT NULL DEFAULT '';
ALTER TABLE vms ADD COLUMN error TEXT NOT NULL DEFAULT '';
ALTER TABLE vms ADD COLUMN supervisor TEXT CHECK (supervisor IS NULL OR json_valid(supervisor));
ALTER TABLE vms ADD COLUMN vmm TEXT CHECK (vmm IS NULL OR json_valid(vmm));
ALTER TABLE vms ADD COLUMN agent TEXT CHECK (agent IS NULL OR json_valid(agent));
ALTER TABLE vms ADD COLUMN agent_at TEXT;
ALTER TABLE vms ADD COLUMN tap TEXT;
ALTER TABLE vms ADD COLUMN kernel_args TEXT CHECK (kernel_args IS NULL OR json_valid(kernel_args));
ALTER TABLE deployments ADD COLUMN error TEXT NOT NULL DEFAULT '';
`

// schemaV3 adds volumes: disk images that outlive VMs (lib/volume).
//
//   - volumes.state is ready, or the operation under way (creating,
//     resizing, deleting), recorded before the file is touched so a
//     restarted volantd finishes or undoes it. volumes.path is the image.
//   - volumes.deployment names the deployment whose volume template made
//     the volume (a replica's own volume, kept on scale-down); no foreign
//     key, so a volume outlives its deployment too.
//   - volume_attachments: a VM uses a volume, mounted at path, in the order
//     idx (its disk serial in the guest is volant-vol<idx>). A VM's rows go
//     with it (ON DELETE CASCADE); a volume with rows cannot be deleted
//     (ON DELETE RESTRICT), so a volume in use is never lost to a delete,
//     whatever the code above does. claimed marks the attachments of the
//     VM that last started with them: with that VM live (starting,
//     running, stopping) they hold the volume, which enforces one writer
//     at a time.
const schemaV3 = `
CREATE TABLE volumes (
	name       TEXT PRIMARY KEY,
	size_bytes INTEGER NOT NULL CHECK (size_bytes > 0),
	fs         TEXT NOT NULL,
	format     TEXT NOT NULL DEFAULT 'raw' CHECK (format IN ('raw', 'qcow2')),
	state      TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'resizing', 'deleting')),
	path       TEXT NOT NULL UNIQUE,
	deployment TEXT,
	error      TEXT NOT NULL DEFAULT '',
	created_at TEXT NOT NULL,
	updated_at TEXT NOT NULL
) STRICT;
CREATE INDEX volumes_deployment ON volumes(deployment) WHERE deployment IS NOT NULL;

CREATE TABLE volume_attachments (
	vm         TEXT NOT NULL REFERENCES vms(id) ON UPDATE CASCADE ON DELETE CASCADE,
	volume     TEXT NOT NULL REFERENCES volumes(name) ON UPDATE CASCADE ON DELETE RESTRICT,
	idx        INTEGER NOT NULL CHECK (idx >= 0),
	path       TEXT NOT NULL,
	readonly   INTEGER NOT NULL DEFAULT 0 CHECK (readonly IN (0, 1)),
	claimed    INTEGER NOT NULL DEFAULT 0 CHECK (claimed IN (0, 1)),
	created_at TEXT NOT NULL,
	PRIMARY KEY (vm, volume),
	UNIQUE (vm, idx),
	UNIQUE (vm, path)
) STRICT;
CREATE INDEX volume_attachments_volume ON volume_attachments(volume);
`

// schemaV4 adds published ports: host ports forwarded to a VM, or
// balanced across a deployment's healthy replicas (lib/portmap).
//
//   - One row per host port. The primary key refuses the same protocol,
//     port and address twice; an address overlapping "every address" (an
//     empty host_ip) is refused by volantd in the inserting transaction.
//   - The rows go with their owner, by trigger, in the transaction that
//     deletes the VM or deployment, so no code path can forget them.
const schemaV4 = `
CREATE TABLE ports (
	owner_kind TEXT NOT NULL CHECK (owner_kind IN ('vm', 'deployment')),
	owner      TEXT NOT NULL,
	protocol   TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')),
	host_ip    TEXT NOT NULL DEFAULT '',
	host_port  INTEGER NOT NULL CHECK (host_port BETWEEN 1 AND 65535),
	guest_port INTEGER NOT NULL CHECK (guest_port BETWEEN 1 AND 65535),
	PRIMARY KEY (protocol, host_port, host_ip)
) STRICT;
CREATE INDEX ports_owner ON ports(owner_kind, owner);
CREATE TRIGGER vms_ports_gone AFTER DELETE ON vms BEGIN
	DELETE FROM ports WHERE owner_kind = 'vm' AND owner = OLD.id;
END;
CREATE TRIGGER deployments_ports_gone AFTER DELETE ON deployments BEGIN
	DELETE FROM ports WHERE owner_kind = 'deployment' AND owner = OLD.name;
END;
`

// schemaV5: a VM's own workload and labels, and the daemon's settings.
//
//   - vms.workload: the create request's workload override and the names
//     (not the values) of its inputs, JSON; vms.labels: its labels, JSON,
//     selected with json_extract.
//   - settings: one JSON value per key that the daemon keeps across
//     restarts; "network" is the guest subnet set through the API (PUT
//     /api/v1/network: volant-kubelet's podCIDR), which then wins over
//     --subnet (settings.go).
const schemaV5 = `
ALTER TABLE vms ADD COLUMN workload TEXT CHECK (workload IS NULL OR json_valid(workload));
ALTER TABLE vms ADD COLUMN labels TEXT CHECK (labels IS NULL OR json_valid(labels));
CREATE TABLE settings (
	key        TEXT PRIMARY KEY,
	value      TEXT NOT NULL CHECK (json_valid(value)),
	updated_at TEXT NOT NULL
) STRICT;
`

// migrate applies the migrations the database lacks. It reads the version
// first without a write lock, so the common case (nothing to do) costs one
// read; otherwise it takes the write lock and reads again, so concurrent
// first opens apply each migration exactly once.
func (s *Store) migrate(ctx context.Context, ms []migration) error {
	latest := len(ms)
	v, err := s.userVersion(ctx, s.w)
	if err != nil {
		return err
	}
	if v == latest {
		return nil
	}
	if v > latest {
		return s.tooNew(v, latest)
	}
	return s.Tx(ctx, func(tx *sql.Tx) error {
		v, err := s.userVersion(ctx, tx)
		if err != nil {
			return err
		}
		if v > latest {
			return s.tooNew(v, latest)
		}
		for _, m := range ms[v:] {
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("migrating %s to schema version %d (%s): %w", s.path, m.version, m.name, err)
			}
			s.log.Debug("applied migration", "db", s.path, "version", m.version, "name", m.name)
		}
		// PRAGMA takes no bound parameters; latest is an int.
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", latest)); err != nil {
			return fmt.Errorf("recording schema version %d in %s: %w", latest, s.path, err)
		}
		return nil
	})
}

type queryRower interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (s *Store) userVersion(ctx context.Context, q queryRower) (int, error) {
	var v int
	if err := q.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return 0, s.dbErr(ctx, "reading the schema version", err)
	}
	return v, nil
}

func (s *Store) tooNew(v, latest int) error {
	return apierr.New(apierr.NotSupported,
		"database %s has schema version %d, newer than this build's %d: use a newer volant build", s.path, v, latest).
		With("db", s.path).With("schema_version", v).With("supported_version", latest)
}

// schemaV6 holds the API's named tokens (lib/auth): only each token's
// SHA-256, never the token. A revoked token keeps its row (revoked_at), so
// its name stays taken and the audit trail's names stay unambiguous.
const schemaV6 = `
CREATE TABLE tokens (
	name       TEXT PRIMARY KEY,
	role       TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
	hash       TEXT NOT NULL UNIQUE CHECK (length(hash) = 64),
	created_at TEXT NOT NULL,
	created_by TEXT NOT NULL,
	expires_at TEXT,
	revoked_at TEXT,
	revoked_by TEXT
) STRICT;
`

// schemaV7 keeps what a signed plugin was installed from (lib/signing):
// signed_manifest is the manifest's text exactly as signed (the manifest
// column is what install made of it: fetched artifacts' URLs rewritten,
// checksums filled in), signature the minisign signature's text, and
// signed_by the ID of the trusted key that verified it at install (NULL
// when volantd had no --trusted-keys). volantd verifies signed_manifest
// against the signature, and the manifest column against signed_manifest,
// before every boot.
const schemaV7 = `
ALTER TABLE plugins ADD COLUMN signed_manifest TEXT;
ALTER TABLE plugins ADD COLUMN signature TEXT;
ALTER TABLE plugins ADD COLUMN signed_by TEXT;
`

// schemaV8: a plugin installed in several versions, and rolling updates.
//
//   - plugin_versions: one row per installed version of a plugin, with its
//     manifest and signature (as schema 7 keeps them). The plugins row stays the plugin's (its enabled flag, its
//     foreign keys) and copies its default version: the one installed
//     last, which a bare plugin name means. Existing plugins become their
//     only version.
//   - vms.plugin_version, deployments.plugin_version: the version a VM
//     runs, and the one a deployment's new replicas run. Existing rows get
//     their plugin's version.
//   - rollouts: a deployment's rolling updates, numbered by revision, with
//     their limits and state. The state is progressing or rolling_back
//     while the update is under way (at most one such row per deployment),
//     and complete, rolled_back or superseded when it ended. A restarted
//     volantd continues an update where its VM rows say it is.
const schemaV8 = `
CREATE TABLE plugin_versions (
	name       TEXT NOT NULL REFERENCES plugins(name) ON UPDATE CASCADE ON DELETE CASCADE,
	version    TEXT NOT NULL,
	runtime    TEXT NOT NULL,
	manifest   TEXT NOT NULL CHECK (json_valid(manifest)),
	created_at TEXT NOT NULL,
	signed_manifest TEXT,
	signature       TEXT,
	signed_by       TEXT,
	PRIMARY KEY (name, version)
) STRICT;
INSERT INTO plugin_versions (name, version, runtime, manifest, created_at, signed_manifest, signature, signed_by)
	SELECT name, version, runtime, manifest, updated_at, signed_manifest, signature, signed_by FROM plugins;
ALTER TABLE vms ADD COLUMN plugin_version TEXT NOT NULL DEFAULT '';
UPDATE vms SET plugin_version = coalesce((SELECT version FROM plugins WHERE plugins.name = vms.plugin), '');
ALTER TABLE deployments ADD COLUMN plugin_version TEXT NOT NULL DEFAULT '';
UPDATE deployments SET plugin_version = coalesce((SELECT version FROM plugins WHERE plugins.name = deployments.plugin), '');
CREATE TABLE rollouts (
	deployment      TEXT NOT NULL REFERENCES deployments(name) ON UPDATE CASCADE ON DELETE CASCADE,
	revision        INTEGER NOT NULL CHECK (revision > 0),
	from_plugin     TEXT NOT NULL,
	from_version    TEXT NOT NULL,
	to_plugin       TEXT NOT NULL,
	to_version      TEXT NOT NULL,
	max_surge       INTEGER NOT NULL CHECK (max_surge >= 0),
	max_unavailable INTEGER NOT NULL CHECK (max_unavailable >= 0),
	deadline_ms     INTEGER NOT NULL CHECK (deadline_ms > 0),
	state           TEXT NOT NULL CHECK (state IN ('progressing', 'rolling_back', 'complete', 'rolled_back', 'superseded')),
	reason          TEXT NOT NULL DEFAULT '',
	started_at      TEXT NOT NULL,
	updated_at      TEXT NOT NULL,
	finished_at     TEXT,
	PRIMARY KEY (deployment, revision)
) STRICT;
CREATE UNIQUE INDEX rollouts_active ON rollouts(deployment) WHERE state IN ('progressing', 'rolling_back');
`

// schemaV9: a VM's inputs (the env and files of its create request, its
// secrets) sealed at rest. sealed is lib/secretbox's record of the inputs'
// JSON under the key file <data>/secrets.key, with the VM's name as
// associated data; key_id names that key (not the key). The row goes with
// its VM. Before schema 9 the inputs lived in clear in
// <data>/vms/<name>/inputs.json: volantd seals those into this table when
// it starts (lib/controller), which SQL alone cannot do.
const schemaV9 = `
CREATE TABLE vm_inputs (
	vm     TEXT PRIMARY KEY REFERENCES vms(id) ON UPDATE CASCADE ON DELETE CASCADE,
	key_id TEXT NOT NULL,
	sealed BLOB NOT NULL CHECK (length(sealed) > 28)
) STRICT;
`

// schemaV10: a deployment's inputs, every replica's, sealed as schema 9
// seals a VM's (the associated data is "deployment/<name>"). Each replica
// gets its own vm_inputs row when it is made.
const schemaV10 = `
CREATE TABLE deployment_inputs (
	deployment TEXT PRIMARY KEY REFERENCES deployments(name) ON UPDATE CASCADE ON DELETE CASCADE,
	key_id     TEXT NOT NULL,
	sealed     BLOB NOT NULL CHECK (length(sealed) > 28)
) STRICT;
`
