package controller_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/store"
)

// TestNewFillsDefaults checks that the defaults New gives a zero Config
// field reach the controller that uses them: the drain a rolling update
// gives a replica before it is stopped was set on New's copy after the
// controller had taken its own, so every update stopped old replicas at
// once (a connection reset in TestVMRollingUpdate), and the liveness
// message said "grace 0s".
func TestNewFillsDefaults(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "volant.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	c, err := controller.New(controller.Config{Store: st, DataDir: dir, InputsDir: filepath.Join(dir, "run-inputs"),
		Runtime: controllertest.NewRuntime(), Network: controllertest.NewNetwork()})
	if err != nil {
		t.Fatal(err)
	}
	got := c.Settings()
	if got.DrainDelay != 2*time.Second {
		t.Errorf("DrainDelay %s, want the default 2s", got.DrainDelay)
	}
	if got.LivenessGrace != controller.DefaultLivenessGrace {
		t.Errorf("LivenessGrace %s, want the default %s", got.LivenessGrace, controller.DefaultLivenessGrace)
	}
}
