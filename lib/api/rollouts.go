package api

import "time"

// Rolling updates of deployments:
//
//	PATCH /api/v1/deployments/{name}               UpdateDeploymentRequest → Deployment (its rollout started)
//	GET   /api/v1/deployments/{name}/rollout       Rollout: the latest update and its progress (NOT_FOUND: none yet)
//	POST  /api/v1/deployments/{name}/rollout/undo  Rollout: roll back the update under way, or start one back to the version before
//	GET   /api/v1/deployments/{name}/rollouts      RolloutList: every update, newest first

// UpdateDeploymentRequest is the body of PATCH /api/v1/deployments/{name}:
// move the replicas to another plugin version, a batch at a time. Each
// pass creates new replicas while the deployment has fewer than
// replicas+max_surge, and removes old ones while at least
// replicas−max_unavailable stay healthy; so with max_unavailable 0 (the
// default) an old replica goes only once a new one is healthy. A new
// replica that is not healthy within the deadline (or crashes, or cannot
// be created) rolls the update back.
type UpdateDeploymentRequest struct {
	// Plugin is what new replicas run: <name>@<version>, or <name> for
	// the plugin's default version (the one installed last).
	Plugin string `json:"plugin"`
	// MaxSurge is how many replicas the deployment may have above its
	// count during the update. Default 1 (0 for a deployment with volume
	// templates, whose replicas keep their index and so their volumes:
	// it must be 0 for them).
	MaxSurge *int `json:"max_surge,omitempty" jsonschema:"minimum=0,maximum=1000"`
	// MaxUnavailable is how many of its count may be unhealthy because
	// the update removed them. Default 0, or 1 when max_surge is 0; the
	// two cannot both be 0.
	MaxUnavailable *int `json:"max_unavailable,omitempty" jsonschema:"minimum=0,maximum=1000"`
	// DeadlineMS is how long a new replica may take to become healthy
	// before the update rolls back. Default 300000 (5 minutes).
	DeadlineMS int64 `json:"deadline_ms,omitempty" jsonschema:"minimum=0,maximum=86400000"`
}

// DefaultRolloutDeadline is UpdateDeploymentRequest.DeadlineMS's default.
const DefaultRolloutDeadline = 5 * time.Minute

// RolloutState is where a rolling update is.
type RolloutState string

// Rollout states. Progressing and rolling back are under way (a deployment
// has at most one such update); the others are ends.
const (
	RolloutProgressing RolloutState = "progressing"  // replicas are moving to the new version
	RolloutRollingBack RolloutState = "rolling_back" // a new replica failed, or undo: moving back
	RolloutComplete    RolloutState = "complete"     // every replica runs the new version, healthy
	RolloutRolledBack  RolloutState = "rolled_back"  // every replica runs the old version again, healthy
	RolloutSuperseded  RolloutState = "superseded"   // a later update took over
)

// Active says whether the update is under way.
func (s RolloutState) Active() bool { return s == RolloutProgressing || s == RolloutRollingBack }

// Rollout is one rolling update of a deployment.
type Rollout struct {
	Deployment string `json:"deployment"`
	// Revision numbers the deployment's updates from 1.
	Revision int `json:"revision"`
	// From and To are the plugin versions, <name>@<version>.
	From           string       `json:"from"`
	To             string       `json:"to"`
	MaxSurge       int          `json:"max_surge"`
	MaxUnavailable int          `json:"max_unavailable"`
	DeadlineMS     int64        `json:"deadline_ms"`
	State          RolloutState `json:"state"`
	// Reason says why it rolled back or was superseded.
	Reason     string     `json:"reason,omitempty"`
	StartedAt  time.Time  `json:"started_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	// Progress, now, for the deployment's latest update: Target is the
	// version replicas are moving to (From while rolling back), Updated
	// the replicas that run it and Ready those of them that are healthy,
	// Old the replicas of other versions, Healthy every healthy replica.
	Progress *RolloutProgress `json:"progress,omitempty"`
}

// RolloutProgress counts a deployment's replicas during an update.
type RolloutProgress struct {
	Target   string `json:"target"`
	Replicas int    `json:"replicas"`
	Updated  int    `json:"updated"`
	Ready    int    `json:"ready"`
	Old      int    `json:"old"`
	Healthy  int    `json:"healthy"`
}

// RolloutList is the answer of GET /api/v1/deployments/{name}/rollouts.
type RolloutList struct {
	Rollouts []Rollout `json:"rollouts"`
}

// Events of rolling updates; resource_id is the deployment.
const (
	EventRolloutStarted     = "deployment.rollout.started"      // {"name","revision","from","to","max_surge","max_unavailable","deadline_ms"}
	EventRolloutStep        = "deployment.rollout.step"         // {"name","revision","action":"create"|"remove","vm","version","healthy"}: a replica added or taken away
	EventRolloutRollingBack = "deployment.rollout.rolling_back" // {"name","revision","reason"}: a new replica failed, or undo
	EventRolloutComplete    = "deployment.rollout.complete"     // {"name","revision","to"}
	EventRolloutRolledBack  = "deployment.rollout.rolled_back"  // {"name","revision","from"}
	EventRolloutSuperseded  = "deployment.rollout.superseded"   // {"name","revision","by"}
)
