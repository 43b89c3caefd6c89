package kubelet

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
)

// Container state reasons the provider reports.
const (
	ReasonBuilding     = "ImageBuilding"
	ReasonStartError   = "VolantStartError"
	ReasonCreating     = "ContainerCreating"
	ReasonCrashLoop    = "CrashLoopBackOff"
	ReasonVMGone       = "VMGone"
	ReasonVMCrashed    = "VMCrashed"
	ReasonVMFailed     = "VMFailed"
	ReasonVMStopped    = "VMStopped"
	ReasonDeleted      = "VMDeleted"
	ReasonCompleted    = "Completed"
	ReasonError        = "Error"
	containerIDPrefix  = "volant://"
	podReadyToStartCon = corev1.PodConditionType("PodReadyToStartContainers")
)

// status is a pod's status from what the provider knows of it and its VM.
// It depends only on recorded state (no clock), so an unchanged pod gives
// an equal status and is not sent again. Call with p.mu held.
func (p *Provider) status(e *podEntry) *corev1.PodStatus {
	pod := e.pod
	created := metav1.NewTime(e.created)
	st := &corev1.PodStatus{Phase: corev1.PodPending, HostIP: p.cfg.NodeIP, StartTime: &created, QOSClass: qos(pod)}
	if p.cfg.NodeIP != "" {
		st.HostIPs = []corev1.HostIP{{IP: p.cfg.NodeIP}}
	}
	if len(pod.Spec.Containers) == 0 {
		st.Phase, st.Reason, st.Message = corev1.PodFailed, ReasonUnsupported, errText(e.refused)
		return st
	}
	c := pod.Spec.Containers[0]
	cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image, RestartCount: int32(e.restarts)}
	waiting := func(reason, msg string) {
		cs.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
	}
	terminated := func(reason, msg string, code int32, at time.Time) {
		t := &corev1.ContainerStateTerminated{Reason: reason, Message: msg, ExitCode: code, ContainerID: cs.ContainerID}
		if !at.IsZero() {
			t.FinishedAt = metav1.NewTime(at)
		}
		if !e.startedAt.IsZero() {
			t.StartedAt = metav1.NewTime(e.startedAt)
		}
		cs.State = corev1.ContainerState{Terminated: t}
	}
	ready := false
	v := e.vmState
	if v != nil {
		cs.ContainerID = containerIDPrefix + v.Name
		cs.ImageID = v.Plugin
		if v.IP != "" {
			st.PodIP, st.PodIPs = v.IP, []corev1.PodIP{{IP: v.IP}}
		}
	}
	switch {
	case e.refused != nil:
		st.Phase, st.Reason, st.Message = corev1.PodFailed, ReasonUnsupported, e.refused.Error()
		terminated(ReasonUnsupported, e.refused.Error(), 1, time.Time{})
	case e.deleted:
		st.Phase = corev1.PodSucceeded
		terminated(ReasonDeleted, "the pod's VM was deleted", 0, time.Time{})
	case e.gone:
		st.Phase, st.Reason, st.Message = corev1.PodFailed, ReasonVMGone, "the pod's VM was deleted outside Kubernetes"
		terminated(ReasonVMGone, st.Message, 137, time.Time{})
	case v == nil && e.buildErr != nil:
		waiting(ReasonStartError, e.buildErr.Error())
	case v == nil:
		waiting(ReasonBuilding, "volantd builds the plugin of image "+c.Image)
	default:
		ready = p.vmStatus(e, v, st, &cs, waiting, terminated)
	}
	if st.Phase == corev1.PodRunning && !e.startedAt.IsZero() {
		t := metav1.NewTime(e.startedAt)
		if cs.State.Running != nil {
			cs.State.Running.StartedAt = t
		}
	}
	cs.Ready = ready
	started := cs.State.Running != nil
	cs.Started = &started
	st.ContainerStatuses = []corev1.ContainerStatus{cs}
	st.Conditions = conditions(e, st, ready)
	return st
}

// vmStatus fills in a status from the VM's state and kestrel's report of
// its workload; it returns whether the container is ready.
func (p *Provider) vmStatus(e *podEntry, v *api.VM, st *corev1.PodStatus, cs *corev1.ContainerStatus,
	waiting func(string, string), terminated func(string, string, int32, time.Time)) bool {
	running := func() corev1.PodPhase {
		if e.startedAt.IsZero() {
			return corev1.PodPending
		}
		return corev1.PodRunning
	}
	never := e.pod.Spec.RestartPolicy == corev1.RestartPolicyNever
	switch v.State {
	case api.VMStarting, api.VMStopping:
		st.Phase = running()
		waiting(ReasonCreating, "the VM boots")
		return false
	case api.VMCrashed:
		// Started again by Sync unless restartPolicy is Never.
		st.Phase = running()
		if never {
			st.Phase = corev1.PodFailed
		}
		terminated(ReasonVMCrashed, v.Error, 137, v.UpdatedAt)
		return false
	case api.VMFailed:
		st.Phase = corev1.PodFailed
		terminated(ReasonVMFailed, v.Error, 1, v.UpdatedAt)
		return false
	case api.VMStopped:
		st.Phase = corev1.PodFailed
		terminated(ReasonVMStopped, "the VM was stopped outside Kubernetes", 143, v.UpdatedAt)
		return false
	case api.VMRunning:
	default:
		st.Phase = running()
		waiting(ReasonCreating, "the VM is "+string(v.State))
		return false
	}
	var w agentapi.WorkloadStatus
	if v.Agent != nil {
		w = v.Agent.Workload
	}
	cs.RestartCount = int32(w.Restarts + e.restarts)
	if w.ExitCode != nil && w.State != agentapi.WorkloadExited && w.State != agentapi.WorkloadFailed {
		cs.LastTerminationState = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: int32(*w.ExitCode), Reason: exitReason(*w.ExitCode), Signal: 0}}
	}
	switch w.State {
	case agentapi.WorkloadRunning:
		if e.startedAt.IsZero() {
			if w.StartedAt != nil {
				e.startedAt = *w.StartedAt
			} else if v.StartedAt != nil {
				e.startedAt = *v.StartedAt
			} else {
				e.startedAt = e.created
			}
		}
		st.Phase = corev1.PodRunning
		cs.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(e.startedAt)}}
		if e.pod.Spec.Containers[0].ReadinessProbe == nil {
			return true
		}
		return e.ready.ok
	case agentapi.WorkloadRestarting:
		st.Phase = running()
		waiting(ReasonCrashLoop, w.Error)
		return false
	case agentapi.WorkloadExited, agentapi.WorkloadFailed:
		code := int32(1)
		if w.ExitCode != nil {
			code = int32(*w.ExitCode)
		}
		if code == 0 && w.State == agentapi.WorkloadExited {
			st.Phase = corev1.PodSucceeded
		} else {
			st.Phase = corev1.PodFailed
		}
		terminated(exitReason(int(code)), w.Error, code, v.UpdatedAt)
		return false
	default:
		st.Phase = running()
		waiting(ReasonCreating, "the workload starts")
		return false
	}
}

func exitReason(code int) string {
	if code == 0 {
		return ReasonCompleted
	}
	return ReasonError
}

func conditions(e *podEntry, st *corev1.PodStatus, ready bool) []corev1.PodCondition {
	t := metav1.NewTime(e.created)
	b := func(ok bool) corev1.ConditionStatus {
		if ok {
			return corev1.ConditionTrue
		}
		return corev1.ConditionFalse
	}
	readyAt := t
	if ready && !e.startedAt.IsZero() {
		readyAt = metav1.NewTime(e.startedAt)
	}
	if !e.ready.since.IsZero() {
		readyAt = metav1.NewTime(e.ready.since)
	}
	vmUp := st.PodIP != "" || (e.vmState != nil && e.vmState.State == api.VMRunning)
	return []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: t},
		{Type: podReadyToStartCon, Status: b(vmUp), LastTransitionTime: t},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: t},
		{Type: corev1.ContainersReady, Status: b(ready), LastTransitionTime: readyAt},
		{Type: corev1.PodReady, Status: b(ready), LastTransitionTime: readyAt},
	}
}

// qos is the pod's QoS class as the API server computed it (the status
// field is the API server's to fill; keep what it says).
func qos(pod *corev1.Pod) corev1.PodQOSClass { return pod.Status.QOSClass }

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
