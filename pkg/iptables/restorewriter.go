package iptables

import (
	"bufio"
	"io"
)

// RestoreWriter writes iptables-restore input: the one place that knows its
// syntax ("*table", ":CHAIN - [0:0]", "-A CHAIN rule", "-X CHAIN",
// "COMMIT"). It streams: nothing is held beyond the buffer of the writer
// underneath. The first write error is kept and every later write is
// skipped; Flush (or Err, for an unbuffered writer) reports it.
type RestoreWriter struct {
	w   stringWriter
	buf *bufio.Writer // set when NewRestoreWriter had to buffer w
	err error
}

// stringWriter is what RestoreWriter writes through: bytes.Buffer,
// strings.Builder and bufio.Writer all are.
type stringWriter interface {
	io.Writer
	io.StringWriter
}

// NewRestoreWriter writes to w, through a buffer unless w is one already
// (bytes.Buffer, strings.Builder, bufio.Writer).
func NewRestoreWriter(w io.Writer) *RestoreWriter {
	if sw, ok := w.(stringWriter); ok {
		return &RestoreWriter{w: sw}
	}
	b := bufio.NewWriterSize(w, 256<<10)
	return &RestoreWriter{w: b, buf: b}
}

func (r *RestoreWriter) write(parts ...string) {
	for _, p := range parts {
		if r.err != nil {
			return
		}
		_, r.err = r.w.WriteString(p)
	}
}

// Table starts a table's block.
func (r *RestoreWriter) Table(name string) { r.write("*", name, "\n") }

// DeclareChain declares (and so creates, or flushes) a chain.
func (r *RestoreWriter) DeclareChain(name string) { r.write(":", name, " - [0:0]\n") }

// Rule appends a rule (its arguments after "-A CHAIN") to chain.
func (r *RestoreWriter) Rule(chain, args string) { r.write("-A ", chain, " ", args, "\n") }

// Rules appends rules to chain, in order.
func (r *RestoreWriter) Rules(chain string, rules []string) {
	for _, rule := range rules {
		r.Rule(chain, rule)
	}
}

// Line writes one complete line as it is ("-I …", "-D …").
func (r *RestoreWriter) Line(text string) { r.write(text, "\n") }

// DeleteChain deletes a chain (declared and so flushed earlier in the
// block).
func (r *RestoreWriter) DeleteChain(name string) { r.write("-X ", name, "\n") }

// Commit ends a table's block.
func (r *RestoreWriter) Commit() { r.write("COMMIT\n") }

// Err is the first write error.
func (r *RestoreWriter) Err() error { return r.err }

// Flush writes out what a buffer NewRestoreWriter added still holds, and
// returns the first error of any write.
func (r *RestoreWriter) Flush() error {
	if r.err == nil && r.buf != nil {
		r.err = r.buf.Flush()
	}
	return r.err
}
