package kubelet

import (
	"context"
	"errors"
	"fmt"
	"k8s.io/client-go/tools/record"
	"log/slog"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1listers "k8s.io/client-go/listers/core/v1"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

// ProviderConfig configures a Provider.
type ProviderConfig struct {
	// Node is the node's name (the VMs' volant.dev/node label).
	Node string
	// NodeIP is the pods' hostIP.
	NodeIP string
	// Volant is the local volantd.
	Volant Volant
	// ConfigMaps and Secrets are read for configMap and secret volumes.
	ConfigMaps corev1listers.ConfigMapLister
	Secrets    corev1listers.SecretLister
	// Tokens serves the service account tokens of projected volumes
	// (nil: a pod with one fails to start, saying so).
	Tokens TokenRequester
	// Interval is how often VMs are listed for pod status (default 1 s).
	Interval time.Duration
	// Insecure lets image builds reach plain-HTTP or unverified registries.
	Insecure bool
	// NetworkReady, when set, is closed once volantd's guest subnet is the
	// node's podCIDR: no VM is created before (images are built meanwhile).
	NetworkReady <-chan struct{}
	// Events records the pod's events: the image build, the VM's create,
	// probe failures (nil: none).
	Events record.EventRecorder
	Logger *slog.Logger
}

// Provider is the virtual-kubelet provider (nodeutil.Provider and
// node.PodNotifier).
type Provider struct {
	cfg ProviderConfig
	log *slog.Logger

	mu     sync.Mutex
	pods   map[string]*podEntry // by namespace/name
	notify func(*corev1.Pod)
	kick   chan struct{}
	now    func() time.Time

	statsMu sync.Mutex
	stats   statsState
}

// podEntry is a pod the provider runs.
type podEntry struct {
	pod    *corev1.Pod // as given to CreatePod/UpdatePod; Status is ours
	vm     string
	uid    types.UID
	cancel context.CancelFunc // ends the build and the probes
	// work is the pod's start and token refresh, which DeletePod waits
	// for after cancel: none of them writes into the guest after it.
	work sync.WaitGroup
	// state, for the status
	building  bool
	buildErr  error
	refused   error
	created   time.Time
	vmState   *api.VM   // last seen; nil before the VM exists or once gone
	vmAt      time.Time // when vmState was set by a create (zero: adopted)
	startAt   time.Time // the provider's last start of a crashed VM
	gone      bool      // the VM was there and is no longer
	deleted   bool
	ready     probeResult
	liveness  probeResult
	restarts  int // liveness and crash restarts by the provider
	sent      *corev1.PodStatus
	startedAt time.Time
	// running: the container was running at the last status (a Started
	// event is recorded when it starts running).
	running bool
	// tokens are the service account tokens the VM was created with.
	tokens []tokenFile
	// rebooted has the time before the provider started the VM again (a
	// liveness or crash restart): it boots with the inputs it was
	// created with, its tokens as old as the VM, so they are written
	// again once its workload runs.
	rebooted chan time.Time
}

// reboot tells the token refresh that the VM is started again (at is
// before the start was asked for).
func (e *podEntry) reboot(at time.Time) {
	select {
	case e.rebooted <- at:
	default:
	}
}

// NewProvider returns a provider; Run starts its status loop.
func NewProvider(cfg ProviderConfig) *Provider {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = discard()
	}
	return &Provider{cfg: cfg, log: cfg.Logger, pods: map[string]*podEntry{}, kick: make(chan struct{}, 1), now: time.Now}
}

func key(ns, name string) string { return ns + "/" + name }

// CreatePod runs a pod: it adopts the VM carrying the pod's UID when there
// is one (a restarted provider), else builds the image's plugin and
// creates the VM in the background; status follows through NotifyPods.
func (p *Provider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	k := key(pod.Namespace, pod.Name)
	p.mu.Lock()
	if e, ok := p.pods[k]; ok && e.uid == pod.UID {
		e.pod = pod.DeepCopy()
		p.mu.Unlock()
		return nil
	}
	p.mu.Unlock()

	e := &podEntry{pod: pod.DeepCopy(), vm: VMName(pod), uid: pod.UID, created: p.now(), rebooted: make(chan time.Time, 1)}
	if err := checkPod(pod); err != nil {
		e.refused = err
		p.put(k, e)
		return nil
	}
	vms, err := p.cfg.Volant.ListVMs(ctx, api.VMFilter{Label: LabelPodUID + "=" + string(pod.UID)})
	if err != nil {
		return fmt.Errorf("looking for the VM of pod %s: %w", k, err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	if len(vms) > 0 {
		// Adopted: the VM (and its address) stays.
		e.vm = vms[0].Name
		v := vms[0]
		e.vmState = &v
		// Its start was recorded by the provider that created it.
		e.running = v.State == api.VMRunning && v.Agent != nil && v.Agent.Workload.State == agentapi.WorkloadRunning
		p.log.Info("adopted the VM of a pod", "pod", k, "vm", e.vm)
		p.put(k, e)
		// Its tokens' times are unknown: new ones at once.
		e.work.Add(1)
		go func() {
			defer e.work.Done()
			p.refreshTokens(wctx, k, e, tokenSpecs(pod))
		}()
	} else {
		e.building = true
		p.put(k, e)
		e.work.Add(1)
		go func() {
			defer e.work.Done()
			p.start(wctx, k, e)
		}()
	}
	p.startProbes(wctx, k, e)
	return nil
}

func (p *Provider) put(k string, e *podEntry) {
	p.mu.Lock()
	if old, ok := p.pods[k]; ok && old.cancel != nil && old != e {
		old.cancel()
	}
	p.pods[k] = e
	p.mu.Unlock()
	p.poke()
}

func (p *Provider) poke() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// start builds the plugin and creates the VM, retrying with a backoff (an
// unreachable registry, a missing ConfigMap) until the pod is deleted.
func (p *Provider) start(ctx context.Context, k string, e *podEntry) {
	backoff := 2 * time.Second
	for {
		err := p.startOnce(ctx, e)
		p.mu.Lock()
		e.buildErr = err
		if err == nil || isUnsupported(err) {
			e.building = false
			if isUnsupported(err) {
				e.refused = err
			}
		}
		p.mu.Unlock()
		p.poke()
		if err == nil {
			p.mu.Lock()
			toks := e.tokens
			p.mu.Unlock()
			p.refreshTokens(ctx, k, e, toks)
			return
		}
		if isUnsupported(err) || ctx.Err() != nil {
			return
		}
		p.log.Warn("starting a pod's VM", "pod", k, "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Minute)
	}
}

func (p *Provider) startOnce(ctx context.Context, e *podEntry) error {
	p.mu.Lock()
	pod := e.pod.DeepCopy()
	p.mu.Unlock()
	c := pod.Spec.Containers[0]
	p.event(pod, corev1.EventTypeNormal, "Building", "building a plugin from image %s", c.Image)
	plugin, built, err := p.cfg.Volant.InstallImage(ctx, api.InstallImageRequest{Image: c.Image, Pull: pullPolicy(c.ImagePullPolicy), Insecure: p.cfg.Insecure})
	if err != nil {
		p.event(pod, corev1.EventTypeWarning, "BuildFailed", "building a plugin from image %s: %v", c.Image, err)
		return fmt.Errorf("building the plugin of image %s: %w", c.Image, err)
	}
	if built {
		p.event(pod, corev1.EventTypeNormal, "Built", "plugin %s built from image %s", plugin.Name, c.Image)
	} else {
		p.event(pod, corev1.EventTypeNormal, "Built", "plugin %s of image %s already built", plugin.Name, c.Image)
	}
	req, toks, err := vmRequest(ctx, pod, p.cfg.Node, plugin.Name, sources{p.cfg.ConfigMaps, p.cfg.Secrets, p.cfg.Tokens})
	if err != nil {
		return err
	}
	req.Name = e.vm
	if ch := p.cfg.NetworkReady; ch != nil {
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	vm, err := p.cfg.Volant.CreateVM(ctx, req)
	if apierr.Is(err, apierr.Conflict) {
		// A create that was answered too late: the VM is there.
		vms, lerr := p.cfg.Volant.ListVMs(ctx, api.VMFilter{Label: LabelPodUID + "=" + string(pod.UID)})
		if lerr == nil && len(vms) > 0 {
			vm, err = &vms[0], nil
		}
	}
	if err != nil {
		p.event(pod, corev1.EventTypeWarning, "Failed", "creating VM %s: %v", req.Name, err)
		return fmt.Errorf("creating VM %s: %w", req.Name, err)
	}
	p.event(pod, corev1.EventTypeNormal, "Created", "VM %s created, address %s; booting", vm.Name, vm.IP)
	p.mu.Lock()
	e.vmState, e.vmAt = vm, p.now()
	e.tokens = toks
	p.mu.Unlock()
	return nil
}

// event records an event on pod when the provider has a recorder.
func (p *Provider) event(pod *corev1.Pod, typ, reason, format string, args ...any) {
	if p.cfg.Events != nil {
		p.cfg.Events.Eventf(pod, typ, reason, format, args...)
	}
}

func isUnsupported(err error) bool {
	var u *unsupported
	return errors.As(err, &u)
}

// UpdatePod takes the pod's new metadata; a VM's spec does not change in
// place (the API server allows only image and toleration changes).
func (p *Provider) UpdatePod(_ context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.pods[key(pod.Namespace, pod.Name)]
	if !ok || e.uid != pod.UID {
		return errdefs.NotFoundf("pod %s/%s is not on this node", pod.Namespace, pod.Name)
	}
	e.pod.ObjectMeta = *pod.ObjectMeta.DeepCopy()
	return nil
}

// DeletePod deletes the pod's VM and reports its containers terminated.
func (p *Provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	k := key(pod.Namespace, pod.Name)
	p.mu.Lock()
	e, ok := p.pods[k]
	p.mu.Unlock()
	vm := VMName(pod)
	if ok {
		if e.cancel != nil {
			e.cancel()
		}
		e.work.Wait()
		vm = e.vm
	}
	// The VM carrying the UID, whatever its name.
	names := map[string]bool{}
	if vms, err := p.cfg.Volant.ListVMs(ctx, api.VMFilter{Label: LabelPodUID + "=" + string(pod.UID)}); err == nil {
		for _, v := range vms {
			names[v.Name] = true
		}
	} else {
		names[vm] = true
	}
	for n := range names {
		if _, err := p.cfg.Volant.DeleteVM(ctx, n); err != nil && !apierr.Is(err, apierr.NotFound) {
			return fmt.Errorf("deleting VM %s of pod %s: %w", n, k, err)
		}
	}
	p.mu.Lock()
	if !ok {
		e = &podEntry{pod: pod.DeepCopy(), vm: vm, uid: pod.UID}
	}
	e.deleted = true
	st := p.status(e)
	delete(p.pods, k)
	notify := p.notify
	p.mu.Unlock()
	if notify != nil {
		out := e.pod.DeepCopy()
		out.Status = *st
		notify(out)
	}
	return nil
}

// GetPod is the pod as the provider runs it, nil when it does not.
func (p *Provider) GetPod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.pods[key(ns, name)]
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s is not on this node", ns, name)
	}
	out := e.pod.DeepCopy()
	out.Status = *p.status(e)
	return out, nil
}

// GetPodStatus is GetPod's status.
func (p *Provider) GetPodStatus(ctx context.Context, ns, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods lists the pods the provider runs and, not yet claimed by a
// CreatePod (after a restart), the pods its VMs belong to: virtual-kubelet
// deletes those Kubernetes no longer has.
func (p *Provider) GetPods(ctx context.Context) ([]*corev1.Pod, error) {
	vms, err := p.cfg.Volant.ListVMs(ctx, api.VMFilter{Label: LabelNode + "=" + p.cfg.Node})
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*corev1.Pod
	known := map[types.UID]bool{}
	for _, e := range p.pods {
		pod := e.pod.DeepCopy()
		pod.Status = *p.status(e)
		out = append(out, pod)
		known[e.uid] = true
	}
	for _, v := range vms {
		uid := types.UID(v.Labels[LabelPodUID])
		if uid == "" || known[uid] {
			continue
		}
		known[uid] = true
		out = append(out, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: v.Labels[LabelPodNamespace], Name: v.Labels[LabelPodName], UID: uid},
			Spec:       corev1.PodSpec{NodeName: p.cfg.Node, Containers: []corev1.Container{{Name: v.Labels[LabelContainer]}}},
		})
	}
	return out, nil
}

// NotifyPods registers the callback that receives status changes.
func (p *Provider) NotifyPods(_ context.Context, f func(*corev1.Pod)) {
	p.mu.Lock()
	p.notify = f
	p.mu.Unlock()
}

// Run refreshes pod status from volantd every Interval (and at once after
// a change) until ctx ends.
func (p *Provider) Run(ctx context.Context) {
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		if err := p.Sync(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("listing the node's VMs", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.kick:
		}
	}
}

// CrashRestartDelay is the least time between two starts of a crashed VM
// (restartPolicy Always, or OnFailure).
const CrashRestartDelay = 10 * time.Second

// Sync reads the node's VMs once and sends each pod whose status changed.
// A crashed VM whose pod's restartPolicy says so is started again.
func (p *Provider) Sync(ctx context.Context) error {
	listed := p.now()
	vms, err := p.cfg.Volant.ListVMs(ctx, api.VMFilter{Label: LabelNode + "=" + p.cfg.Node})
	if err != nil {
		return err
	}
	byName := map[string]api.VM{}
	for _, v := range vms {
		byName[v.Name] = v
	}
	p.mu.Lock()
	var changed []*corev1.Pod
	var restart []*podEntry
	var started []*podEntry
	for _, e := range p.pods {
		if v, ok := byName[e.vm]; ok {
			e.vmState = &v
			if v.State == api.VMCrashed && !e.deleted && e.pod.Spec.RestartPolicy != corev1.RestartPolicyNever &&
				listed.Sub(e.startAt) >= CrashRestartDelay {
				e.startAt = listed
				e.restarts++
				restart = append(restart, e)
			}
		} else if e.vmState != nil && !e.building && e.vmAt.Before(listed) {
			// Not a VM created after the list was asked for: gone.
			e.vmState, e.gone = nil, true
		}
		st := p.status(e)
		running := len(st.ContainerStatuses) == 1 && st.ContainerStatuses[0].State.Running != nil
		if running && !e.running {
			started = append(started, e)
		}
		e.running = running
		if e.sent != nil && equality.Semantic.DeepEqual(e.sent, st) {
			continue
		}
		e.sent = st
		pod := e.pod.DeepCopy()
		pod.Status = *st
		changed = append(changed, pod)
	}
	notify := p.notify
	for i, e := range started {
		started[i] = &podEntry{pod: e.pod.DeepCopy(), vm: e.vm}
	}
	p.mu.Unlock()
	for _, e := range started {
		p.event(e.pod, corev1.EventTypeNormal, "Started", "the workload of VM %s is running", e.vm)
	}
	for _, e := range restart {
		p.log.Info("starting a crashed pod VM again", "vm", e.vm)
		at := time.Now()
		if _, err := p.cfg.Volant.StartVM(ctx, e.vm); err != nil {
			p.log.Warn("starting a crashed pod VM", "vm", e.vm, "err", err)
		} else {
			e.reboot(at)
		}
	}
	if notify != nil {
		for _, pod := range changed {
			notify(pod)
		}
	}
	return nil
}
