package proxier_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/switchyard-proxy/switchyard/internal/fuzzgen"
	"github.com/switchyard-proxy/switchyard/pkg/iptables"
	"github.com/switchyard-proxy/switchyard/pkg/manifest"
	"github.com/switchyard-proxy/switchyard/pkg/proxier"
)

// FuzzRender: for any snapshot and config the renderer does not panic, its
// output is accepted by our restore model (so by construction: every jump
// has its chain, no chain is deleted while referenced), and a partial sync
// from any earlier state converges to the same rules.
func FuzzRender(f *testing.F) {
	for _, seed := range []string{"", "\x00", "\xff\xff\xff", "web-service-with-everything-\x01\x02\x03\x04\x05\x06\x07\x08\x09"} {
		f.Add([]byte(seed), []byte("x"))
	}
	f.Fuzz(func(t *testing.T, a, b []byte) {
		for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			cfg := fuzzgen.Config(a, fam)
			first, second := fuzzgen.Snapshot(a), fuzzgen.Snapshot(b)
			text := proxier.RestoreText(proxier.Render(first, cfg))
			if _, err := iptables.ParseSave(text); err != nil {
				t.Fatalf("%s: rendered text does not restore: %v\n%s", fam, err, text)
			}
			host := iptables.NewFake()
			s := proxier.NewSyncer(cfg, host)
			ctx := context.Background()
			if _, err := s.Sync(ctx, first); err != nil {
				t.Fatalf("%s: first sync: %v", fam, err)
			}
			if _, err := s.Sync(ctx, second); err != nil {
				t.Fatalf("%s: partial sync: %v\n%s", fam, err, host.Restores[len(host.Restores)-1])
			}
			fresh := iptables.NewFake()
			if _, err := proxier.NewSyncer(cfg, fresh).Sync(ctx, second); err != nil {
				t.Fatal(err)
			}
			if got, want := host.Snapshot().Save(), fresh.Snapshot().Save(); got != want {
				t.Fatalf("%s: a partial sync did not converge to a fresh sync's rules", fam)
			}
		}
	})
}

// FuzzRenderFiles: any file content is either rejected with an error or
// rendered into text our parser accepts; nothing panics.
func FuzzRenderFiles(f *testing.F) {
	files, _ := filepath.Glob("testdata/objects/*.yaml")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "objects.yaml")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		objs, err := manifest.Load([]string{path}, nil)
		if err != nil {
			return
		}
		snap, _ := proxier.SnapshotFromObjects(proxier.Filter{}, "node-a", objs.Services, objs.Slices, objs.Nodes)
		for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			text := proxier.RestoreText(proxier.Render(snap, proxier.RenderConfig{Family: fam, MasqueradeBit: 14, LocalhostNodePorts: true}))
			if _, err := iptables.ParseSave(text); err != nil {
				t.Fatalf("rendered text does not restore: %v\n%s", err, text)
			}
		}
	})
}
