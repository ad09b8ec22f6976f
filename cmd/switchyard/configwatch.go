package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/fsnotify/fsnotify"
	"k8s.io/klog/v2"
)

// watchConfigFile ends the daemon (through stop, with the reason as cause)
// when the --config file's content changes, as kube-proxy does so that its
// DaemonSet restarts it with the new configuration. The file and its
// directory are both watched, so a ConfigMap update (kubelet swaps the
// "..data" symlink) is seen as well as an edit in place or an editor's
// rename-over; unlike kube-proxy, which exits on any write or rename, only
// a real change of content counts (a touch or a rewrite with the same bytes
// does not restart anything).
func watchConfigFile(ctx context.Context, logger klog.Logger, path string, stop context.CancelCauseFunc) error {
	initial, err := os.ReadFile(path)
	if err != nil {
		return usagef("--config: %v", err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching %s: %w", path, err)
	}
	for _, p := range []string{path, filepath.Dir(path)} {
		if err := w.Add(p); err != nil {
			w.Close()
			return fmt.Errorf("watching %s: %w", p, err)
		}
	}
	go func() {
		defer w.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				logger.Error(err, "Watching the configuration file", "file", path)
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
					// The watched file went (replaced by rename or a new
					// ConfigMap revision): watch what the path is now.
					_ = w.Remove(path)
					_ = w.Add(path)
				}
				now, err := os.ReadFile(path)
				if err != nil || bytes.Equal(now, initial) {
					continue // mid-update, or nothing changed
				}
				logger.Info("The configuration file changed; exiting so that switchyard is restarted with it", "file", path)
				stop(fmt.Errorf("content of the configuration file %s was updated", path))
				return
			}
		}
	}()
	return nil
}
