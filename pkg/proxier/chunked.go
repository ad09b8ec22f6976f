package proxier

import (
	"bytes"

	"github.com/switchyard-proxy/switchyard/pkg/iptables"
)

// A full sync that writes more than MaxRestoreRules is applied as a series
// of restores, each leaving the node consistent, in this order:
//
//  1. the top-level chains the host lacks, empty (so the rest can refer to
//     them) - a restart or hourly resync changes nothing on the host yet;
//  2. each Service port's own chains, a whole port per restore at least:
//     ports already programmed switch from wholly old to wholly new, new
//     ones wait unreferenced;
//  3. the dispatch nodes, children before parents: a node is rewritten
//     only once every chain it jumps to exists;
//  4. the top-level chains (the dispatch roots among them), and the
//     removal of jumps to stale chains from built-in chains;
//  5. the stale chains flushed (nothing refers to them any more but each
//     other), then deleted.
//
// Like a single restore, nothing is flushed before it is rewritten, so
// traffic keeps flowing throughout.

// chunker makes restore texts of at most max rules each (a single chain
// group larger than that makes its own) and hands each to emit; after an
// error it does nothing more.
type chunker struct {
	max   int
	emit  func([]byte) error
	err   error
	cur   map[string]*chunkPart // table -> body
	decl  map[string]*chunkPart // table -> declarations
	rules int
}

// chunkPart is one part of a chunk's text and the writer that fills it.
type chunkPart struct {
	b bytes.Buffer
	w *iptables.RestoreWriter
}

func newChunker(max int, emit func([]byte) error) *chunker {
	return &chunker{max: max, emit: emit, cur: map[string]*chunkPart{}, decl: map[string]*chunkPart{}}
}

func (c *chunker) part(m map[string]*chunkPart, table string) *chunkPart {
	if m[table] == nil {
		p := &chunkPart{}
		p.w = iptables.NewRestoreWriter(&p.b)
		m[table] = p
	}
	return m[table]
}

// group adds chains that must land in one restore; size is their rules.
func (c *chunker) group(size int, add func(c *chunker)) {
	if c.err != nil {
		return
	}
	if c.rules > 0 && c.rules+size > c.max {
		c.flush()
	}
	add(c)
	c.rules += size
}

// The declarations and the body of each table are written apart (a
// bytes.Buffer never fails a write) and joined at flush.
func (c *chunker) chain(table string, ch Chain) {
	c.declare(table, ch.Name)
	c.part(c.cur, table).w.Rules(ch.Name, ch.Rules)
}

func (c *chunker) line(table, text string) { c.part(c.cur, table).w.Line(text) }

func (c *chunker) declare(table, name string) { c.part(c.decl, table).w.DeclareChain(name) }

func (c *chunker) flush() {
	var b bytes.Buffer
	w := iptables.NewRestoreWriter(&b)
	for _, t := range []string{TableFilter, TableNAT} {
		d, body := &c.part(c.decl, t).b, &c.part(c.cur, t).b
		if d.Len()+body.Len() == 0 {
			continue
		}
		w.Table(t)
		b.Write(d.Bytes())
		b.Write(body.Bytes())
		w.Commit()
	}
	if b.Len() > 0 && c.err == nil {
		c.err = c.emit(b.Bytes())
	}
	for _, t := range []string{TableFilter, TableNAT} {
		c.part(c.cur, t).b.Reset()
		c.part(c.decl, t).b.Reset()
	}
	c.rules = 0
}

// hostTables is what a full sync found on the host, per table: every
// chain, the rules in each (counted by their jumps), and the rules in
// built-in chains that jump to chains no longer wanted.
type hostTables struct {
	existing map[string]map[string]bool
	size     map[string]map[string]int
	stale    map[string][]string
	unjump   map[string][]string
	// jump holds, per table, "-I CHAIN 1 ..." lines for the jumps from
	// built-in chains the host lacks, so the full restore inserts them
	// itself (no iptables call per jump; on legacy each call loads the
	// whole table).
	jump map[string][]string
}

// chunkedFullRestore splits a full sync into restores of about max rules,
// applying each with emit as soon as it is made.
func chunkedFullRestore(r *Rules, h hostTables, max int, emit func([]byte) error) (SyncResult, error) {
	var res SyncResult
	c := newChunker(max, emit)
	c.flush() // initialise the buffers
	top := TopLevelChains()
	tables := []string{TableFilter, TableNAT}

	// 1. Missing top-level chains, empty.
	for _, t := range tables {
		for _, name := range top[t] {
			if !h.existing[t][name] {
				c.declare(t, name)
			}
		}
	}
	c.flush()

	// 2. Service ports' own chains, a port at a time.
	for _, pr := range r.ports { // in name order
		size := 0
		for _, chains := range [][]Chain{pr.nat, pr.filter} {
			for _, ch := range chains {
				size += len(ch.Rules) + 1
			}
		}
		c.group(size, func(c *chunker) {
			for _, ch := range pr.nat {
				c.chain(TableNAT, ch)
			}
			for _, ch := range pr.filter {
				c.chain(TableFilter, ch)
			}
		})
		res.ChainsWritten += len(pr.nat) + len(pr.filter)
	}
	c.flush()

	// 3. Dispatch nodes, children first.
	for _, t := range tables {
		for _, name := range r.dispatch[t] {
			ch := Chain{Name: name, Rules: r.shared[t][name]}
			c.group(len(ch.Rules)+1, func(c *chunker) { c.chain(t, ch) })
			res.ChainsWritten++
		}
	}
	c.flush()

	// 4. Top-level chains, jumps to stale chains removed, missing jumps
	// from the built-in chains inserted.
	for _, t := range tables {
		for _, name := range top[t] {
			c.chain(t, Chain{Name: name, Rules: r.shared[t][name]})
			res.ChainsWritten++
		}
		for _, line := range h.unjump[t] {
			c.line(t, line)
		}
		for _, line := range h.jump[t] {
			c.line(t, line)
		}
	}
	c.flush()

	// 5. Stale chains: flushed in bounded restores, then deleted.
	for _, t := range tables {
		for _, name := range h.stale[t] {
			c.group(h.size[t][name]+1, func(c *chunker) { c.declare(t, name) })
		}
	}
	c.flush()
	for _, t := range tables {
		for _, name := range h.stale[t] {
			c.line(t, "-X "+name)
			res.ChainsDeleted++
		}
	}
	c.flush()
	return res, c.err
}

// ruleCount is the rules a Rules holds, all tables.
func ruleCount(r *Rules) int {
	n := 0
	for _, t := range r.Tables {
		for _, c := range t.Chains {
			n += len(c.Rules)
		}
	}
	return n
}
