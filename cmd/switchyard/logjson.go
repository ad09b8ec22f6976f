package main

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// newJSONLogger is --logging-format=json: one JSON object per line in the
// shape of Kubernetes components' JSON logs ("ts" in seconds, "caller",
// "msg", "v" for info lines, "err" for errors, then the key/value pairs).
func newJSONLogger(w io.Writer) logr.Logger {
	return logr.New(&jsonSink{w: w, mu: &sync.Mutex{}})
}

type jsonSink struct {
	w      io.Writer
	mu     *sync.Mutex
	name   string
	values []any
	depth  int
}

func (s *jsonSink) Init(info logr.RuntimeInfo) { s.depth = info.CallDepth }

// Enabled follows -v (and --vmodule, as klog sees it).
func (s *jsonSink) Enabled(level int) bool { return klog.V(klog.Level(level)).Enabled() }

func (s *jsonSink) Info(level int, msg string, kv ...any) {
	s.write(msg, map[string]any{"v": level}, kv)
}

func (s *jsonSink) Error(err error, msg string, kv ...any) {
	fields := map[string]any{}
	if err != nil {
		fields["err"] = err.Error()
	}
	s.write(msg, fields, kv)
}

func (s *jsonSink) write(msg string, fields map[string]any, kv []any) {
	fields["ts"] = float64(time.Now().UnixNano()) / 1e9
	fields["msg"] = msg
	if _, file, line, ok := runtime.Caller(s.depth + 2); ok {
		fields["caller"] = fmt.Sprintf("%s:%d", filepath.Base(file), line)
	}
	if s.name != "" {
		fields["logger"] = s.name
	}
	all := append(append([]any{}, s.values...), kv...)
	for i := 0; i+1 < len(all); i += 2 {
		k, ok := all[i].(string)
		if !ok {
			k = fmt.Sprint(all[i])
		}
		v := all[i+1]
		if e, ok := v.(error); ok {
			v = e.Error()
		} else if st, ok := v.(fmt.Stringer); ok {
			v = st.String()
		}
		fields[k] = v
	}
	b, err := json.Marshal(fields)
	if err != nil {
		b, _ = json.Marshal(map[string]any{"ts": fields["ts"], "msg": msg, "err": "cannot encode log line: " + err.Error()})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _ = s.w.Write(append(b, '\n'))
}

func (s *jsonSink) WithValues(kv ...any) logr.LogSink {
	c := *s
	c.values = append(append([]any{}, s.values...), kv...)
	return &c
}

func (s *jsonSink) WithName(name string) logr.LogSink {
	c := *s
	if c.name != "" {
		c.name += "/"
	}
	c.name += name
	return &c
}

func (s *jsonSink) WithCallDepth(depth int) logr.LogSink {
	c := *s
	c.depth += depth
	return &c
}
