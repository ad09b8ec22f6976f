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
		_, _ = fmt.Sscanf(strings.TrimPrefix(strings.Split(string(data), "\n")[0], "MemTotal:"), "%f", &kb) // 0 if unreadable
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
	// notTheProxys: the API server's time, shown for context; no ratio.
	notTheProxys bool
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
	{"cold start (all rules applied)", func(r *Result) float64 { return r.ColdStart }, fmtSec, true, false},
	{"new Service to traffic p50", func(r *Result) float64 { return pct(r.NewService, 50) }, fmtSec, true, false},
	{"new Service to traffic p99", func(r *Result) float64 { return pct(r.NewService, 99) }, fmtSec, true, false},
	{"… of which the API's two creates, p50", func(r *Result) float64 { return pct(r.NewServiceAPI, 50) }, fmtSec, true, true},
	{"endpoint change to traffic p50", func(r *Result) float64 { return pct(r.EndpointChange, 50) }, fmtSec, true, false},
	{"endpoint change to traffic p99", func(r *Result) float64 { return pct(r.EndpointChange, 99) }, fmtSec, true, false},
	{"restore input per endpoint change", func(r *Result) float64 { return r.RestoreBytesPerChange }, num("%.0f B"), true, false},
	{"restore time per endpoint change", func(r *Result) float64 { return r.RestoreSecondsPerChange }, fmtSec, true, false},
	{"mass delete, total", func(r *Result) float64 { return r.MassDeleteTotal }, fmtSec, true, false},
	{"mass delete, longest restore", func(r *Result) float64 { return r.MassDeleteLongest }, fmtSec, true, false},
	{"change during mass delete to traffic", func(r *Result) float64 { return r.ChangeDuringDelete }, fmtSec, true, false},
	{"connections/s, handful of Services", func(r *Result) float64 { return r.ConnRateHandful }, num("%.0f"), false, false},
	{"connections/s, N Services", func(r *Result) float64 { return r.ConnRateLoaded }, num("%.0f"), false, false},
	{"CPU seconds to cold start", func(r *Result) float64 { return r.CPULoadSeconds }, num("%.1f"), true, false},
	{"idle CPU", func(r *Result) float64 { return r.IdleCPUPercent }, num("%.2f %%"), true, false},
	{"churn: CPU, % of one core (10 changes/s)", func(r *Result) float64 { return r.ChurnCPUPercent }, num("%.0f %%"), true, false},
	{"churn: restores", func(r *Result) float64 { return float64(r.ChurnRestores) }, num("%.0f"), true, false},
	{"churn: a change to traffic p50", func(r *Result) float64 { return pct(r.ChurnLatency, 50) }, fmtSec, true, false},
	{"churn: a change to traffic p99", func(r *Result) float64 { return pct(r.ChurnLatency, 99) }, fmtSec, true, false},
	{"mass delete, CPU seconds", func(r *Result) float64 { return r.MassDeleteCPU }, num("%.1f"), true, false},
	{"nat rules (nftables mode: its table's rules)", func(r *Result) float64 { return float64(r.NATRules) }, num("%.0f"), true, false},
	{"nat chains", func(r *Result) float64 { return float64(r.NATChains) }, num("%.0f"), true, false},
	{"peak RSS", func(r *Result) float64 { return r.PeakRSSMB }, num("%.0f MB"), true, false},
}

// proxyOrder is the order of the columns: switchyard first, then each
// proxy it is compared with.
var proxyOrder = []string{"switchyard", "kube-proxy", "kube-proxy-nft"}

var proxyTitle = map[string]string{"switchyard": "switchyard", "kube-proxy": "kube-proxy (iptables)", "kube-proxy-nft": "kube-proxy (nftables)"}

// present is the group's proxies in column order.
func (g *group) present() []*Result {
	var out []*Result
	for _, p := range proxyOrder {
		if r := g.proxies[p]; r != nil {
			out = append(out, r)
		}
	}
	return out
}

func (g *group) title() string {
	r := firstOf(g.present()...)
	shape := "all endpoints local"
	if r.Nodes > 1 {
		shape = fmt.Sprintf("endpoints spread over %d nodes", r.Nodes)
	}
	live := ""
	if r.LiveLoad {
		live = "; the proxy ran through the load (cold start: the catch-up after it; CPU: from before the load)"
	}
	return fmt.Sprintf("%d Services x %d endpoints, %s, %s%s", g.size, r.Endpoints, shape, g.backend, live)
}

// rows is the table of one group: a header, then per metric the values of
// each proxy and how many times better switchyard is than each other one.
func (g *group) rows() [][]string {
	rs := g.present()
	head := []string{g.title()}
	for _, r := range rs {
		head = append(head, proxyTitle[r.Proxy])
	}
	sy := g.proxies["switchyard"]
	var others []*Result
	if sy != nil {
		for _, r := range rs[1:] {
			others = append(others, r)
			head = append(head, "better than "+proxyTitle[r.Proxy])
		}
	}
	out := [][]string{head}
	for _, m := range metrics {
		row := []string{m.name}
		for _, r := range rs {
			row = append(row, m.unit(m.get(r)))
		}
		for _, o := range others {
			row = append(row, ratio(m, sy, o))
		}
		out = append(out, row)
	}
	return out
}

func (g *group) errors() []string {
	var out []string
	for _, r := range g.present() {
		if r.Error != "" {
			out = append(out, fmt.Sprintf("%s failed: %s", r.Proxy, r.Error))
		}
	}
	return out
}

// printMarkdown writes the comparison as Markdown tables.
func printMarkdown(w io.Writer, results []*Result) {
	for _, g := range groups(results) {
		rows := g.rows()
		fmt.Fprintf(w, "\n**%s**\n\n", rows[0][0])
		rows[0][0] = ""
		for i, row := range rows {
			fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
			if i == 0 {
				fmt.Fprintf(w, "|%s\n", strings.Repeat(" --- |", len(row)))
			}
		}
		for _, e := range g.errors() {
			fmt.Fprintf(w, "\n%s\n", e)
		}
	}
}

// ratio is how many times better switchyard's value is than the other's.
func ratio(m metric, sy, other *Result) string {
	va, vb := m.get(sy), m.get(other)
	switch {
	case m.notTheProxys:
		return ""
	case va > 0 && vb > 0 && m.lowerIsBetter:
		return fmt.Sprintf("%.1fx", vb/va)
	case va > 0 && vb > 0:
		return fmt.Sprintf("%.2fx", va/vb)
	case va > 0 && vb < 0 && m.lowerIsBetter:
		return "over cap"
	}
	return ""
}

// printTable prints the comparison as aligned text.
func printTable(w io.Writer, results []*Result) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, g := range groups(results) {
		for i, row := range g.rows() {
			indent := "  "
			if i == 0 {
				indent = "\n"
			}
			fmt.Fprintf(tw, "%s%s\n", indent, strings.Join(row, "\t"))
		}
		for _, e := range g.errors() {
			fmt.Fprintf(tw, "  %s\n", e)
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
		k := [2]string{fmt.Sprint(r.Services, "/", max(r.Nodes, 1)), r.Backend}
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
