package proxier

import (
	"bytes"
	"fmt"
	"io"
	"time"

	v1 "k8s.io/api/core/v1"
)

// Batch is one iptables-restore input and what became of it.
type Batch struct {
	Family v1.IPFamily `json:"family"`
	Time   time.Time   `json:"time"`
	Full   bool        `json:"full"`
	Text   string      `json:"text"`
	Error  string      `json:"error,omitempty"`
}

// Batches returns the last applied and the last failed batch (zero values
// when there was none). It never waits for a sync in progress.
func (s *Syncer) Batches() (applied, failed Batch) {
	s.outcome.mu.Lock()
	defer s.outcome.mu.Unlock()
	return s.outcome.lastBatch, s.outcome.lastFailed
}

// captureWriter passes writes on, counting the bytes and keeping the first
// maxDebugText of them for /debug/rules.
type captureWriter struct {
	w    io.Writer
	n    int
	head bytes.Buffer
}

func (c *captureWriter) Write(p []byte) (int, error) {
	if room := maxDebugText - c.head.Len(); room > 0 {
		c.head.Write(p[:min(room, len(p))])
	}
	n, err := c.w.Write(p)
	c.n += n
	return n, err
}

func (c *captureWriter) text() string { return keptText(c.head.Bytes(), c.n) }

// maxDebugText is the most of a batch /debug/rules keeps: a full sync at
// 10,000 Services writes about 14 MB, which is not worth holding.
const maxDebugText = 256 << 10

func debugText(b []byte) string { return keptText(b[:min(len(b), maxDebugText)], len(b)) }

// keptText is the kept head of a batch of total bytes, saying how much was
// not kept.
func keptText(head []byte, total int) string {
	if total <= len(head) {
		return string(head)
	}
	return string(head) + fmt.Sprintf("\n... (%d more bytes not kept)\n", total-len(head))
}
