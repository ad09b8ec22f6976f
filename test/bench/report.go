package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
)

// machine describes where the bench ran.
func machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(line, "model name") {
				model = strings.TrimSpace(line[strings.IndexByte(line, ':')+1:])
				break
			}
		}
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb float64
		fmt.Sscanf(strings.TrimPrefix(strings.Split(string(data), "\n")[0], "MemTotal:"), "%f", &kb)
		mem = fmt.Sprintf(", %.0f GB", kb/1024/1024)
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%d x %s%s, Linux %s", runtime.NumCPU(), model, mem, strings.TrimSpace(string(kernel)))
}

type metric struct {
	name string
	get  func(r *Result) float64
	unit func(float64) string
	// lowerIsBetter decides which way the ratio is taken: it always says
	// how many times better switchyard is.
	lowerIsBetter bool
}

func num(f string) func(float64) string {
	return func(v float64) string {
		if v < 0 {
			return "over cap"
		}
		return fmt.Sprintf(f, v)
	}
}

var metrics = []metric{
	{"cold start (all rules applied)", func(r *Result) float64 { return r.ColdStart }, fmtSec, true},
	{"new Service to traffic p50", func(r *Result) float64 { return pct(r.NewService, 50) }, fmtSec, true},
	{"new Service to traffic p99", func(r *Result) float64 { return pct(r.NewService, 99) }, fmtSec, true},
	{"endpoint change to traffic p50", func(r *Result) float64 { return pct(r.EndpointChange, 50) }, fmtSec, true},
	{"endpoint change to traffic p99", func(r *Result) float64 { return pct(r.EndpointChange, 99) }, fmtSec, true},
	{"restore input per endpoint change", func(r *Result) float64 { return r.RestoreBytesPerChange }, num("%.0f B"), true},
	{"restore time per endpoint change", func(r *Result) float64 { return r.RestoreSecondsPerChange }, fmtSec, true},
	{"mass delete, total", func(r *Result) float64 { return r.MassDeleteTotal }, fmtSec, true},
	{"mass delete, longest restore", func(r *Result) float64 { return r.MassDeleteLongest }, fmtSec, true},
	{"change during mass delete to traffic", func(r *Result) float64 { return r.ChangeDuringDelete }, fmtSec, true},
	{"connections/s, handful of Services", func(r *Result) float64 { return r.ConnRateHandful }, num("%.0f"), false},
	{"connections/s, N Services", func(r *Result) float64 { return r.ConnRateLoaded }, num("%.0f"), false},
	{"CPU seconds to cold start", func(r *Result) float64 { return r.CPULoadSeconds }, num("%.1f"), true},
	{"idle CPU", func(r *Result) float64 { return r.IdleCPUPercent }, num("%.2f %%"), true},
	{"peak RSS", func(r *Result) float64 { return r.PeakRSSMB }, num("%.0f MB"), true},
}

// printMarkdown writes the same comparison as Markdown tables.
func printMarkdown(w io.Writer, results []*Result) {
	for _, g := range groups(results) {
		sy, kp := g.proxies["switchyard"], g.proxies["kube-proxy"]
		fmt.Fprintf(w, "\n**%d Services x %d endpoints, %s**\n\n", g.size, firstOf(sy, kp).Endpoints, g.backend)
		fmt.Fprintln(w, "| | switchyard | kube-proxy | switchyard better by |")
		fmt.Fprintln(w, "| --- | --- | --- | --- |")
		for _, m := range metrics {
			a, b, ratio := cells(m, sy, kp)
			fmt.Fprintf(w, "| %s | %s | %s | %s |\n", m.name, a, b, ratio)
		}
		for _, r := range []*Result{sy, kp} {
			if r != nil && r.Error != "" {
				fmt.Fprintf(w, "\n%s failed: %s\n", r.Proxy, r.Error)
			}
		}
	}
}

// cells formats one metric for both proxies and the ratio.
func cells(m metric, sy, kp *Result) (a, b, ratio string) {
	a, b = "-", "-"
	var va, vb float64
	if sy != nil {
		va = m.get(sy)
		a = m.unit(va)
	}
	if kp != nil {
		vb = m.get(kp)
		b = m.unit(vb)
	}
	if sy != nil && kp != nil && va > 0 && vb > 0 {
		if m.lowerIsBetter {
			ratio = fmt.Sprintf("%.1fx", vb/va)
		} else {
			ratio = fmt.Sprintf("%.2fx", va/vb)
		}
	}
	return a, b, ratio
}

// printTable prints, per size and backend, each metric for both proxies
// and how many times better switchyard is.
func printTable(w io.Writer, results []*Result) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, g := range groups(results) {
		sy, kp := g.proxies["switchyard"], g.proxies["kube-proxy"]
		fmt.Fprintf(tw, "\n%d Services x %d endpoints, %s\tswitchyard\tkube-proxy\tswitchyard better by\n", g.size, firstOf(sy, kp).Endpoints, g.backend)
		for _, m := range metrics {
			a, b, ratio := cells(m, sy, kp)
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", m.name, a, b, ratio)
		}
		for _, r := range []*Result{sy, kp} {
			if r != nil && r.Error != "" {
				fmt.Fprintf(tw, "  %s failed: %s\t\t\t\n", r.Proxy, r.Error)
			}
		}
	}
	tw.Flush()
}

func firstOf(rs ...*Result) *Result {
	for _, r := range rs {
		if r != nil {
			return r
		}
	}
	return &Result{}
}

// group is one size and backend, with each proxy's result.
type group struct {
	size    int
	backend string
	proxies map[string]*Result
}

// groups collects results by size and backend, in the order they ran.
func groups(results []*Result) []*group {
	var out []*group
	index := map[[2]string]*group{}
	for _, r := range results {
		k := [2]string{fmt.Sprint(r.Services), r.Backend}
		g := index[k]
		if g == nil {
			g = &group{size: r.Services, backend: r.Backend, proxies: map[string]*Result{}}
			index[k] = g
			out = append(out, g)
		}
		g.proxies[r.Proxy] = r
	}
	return out
}
