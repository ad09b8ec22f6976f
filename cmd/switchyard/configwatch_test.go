package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"
)

func waitCause(t *testing.T, ctx context.Context) error {
	t.Helper()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-time.After(10 * time.Second):
		t.Fatal("the daemon was not stopped within 10s of the change")
		return nil
	}
}

// kube-proxy exits when its config file changes, so its DaemonSet restarts
// it with the new one: an edit in place and a ConfigMap update (kubelet
// swaps the ..data symlink) both stop the daemon.
func TestConfigFileChangeStopsTheDaemon(t *testing.T) {
	t.Run("edit", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "config.conf")
		if err := os.WriteFile(path, []byte("a: 1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancelCause(context.Background())
		defer cancel(nil)
		if err := watchConfigFile(ctx, klog.Background(), path, cancel); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte("a: 2\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := waitCause(t, ctx); err == nil || !strings.Contains(err.Error(), "was updated") {
			t.Errorf("cause %v", err)
		}
	})
	t.Run("configmap", func(t *testing.T) {
		dir := t.TempDir()
		for _, rev := range []string{"..rev1", "..rev2"} {
			if err := os.Mkdir(filepath.Join(dir, rev), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "..rev1", "config.conf"), []byte("a: 1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "..rev2", "config.conf"), []byte("a: 2\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("..rev1", filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "config.conf")
		if err := os.Symlink("..data/config.conf", path); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancelCause(context.Background())
		defer cancel(nil)
		if err := watchConfigFile(ctx, klog.Background(), path, cancel); err != nil {
			t.Fatal(err)
		}
		// As kubelet updates a ConfigMap volume: a new symlink renamed over
		// ..data, then the old revision removed.
		if err := os.Symlink("..rev2", filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(filepath.Join(dir, "..rev1")); err != nil {
			t.Fatal(err)
		}
		if err := waitCause(t, ctx); err == nil || !strings.Contains(err.Error(), "was updated") {
			t.Errorf("cause %v", err)
		}
	})
}
