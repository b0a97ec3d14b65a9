package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// The library packages (engine, repo, ...) log through the *slog.Logger in
// their options (nil logs nothing); the CLI makes that logger here, so that
// every command's log lines look alike:
//
//   - for people, a record is one line holding its message: the message is
//     the whole sentence, and attributes are for machines. A warning is
//     written "warning: MESSAGE", an error "error: MESSAGE". Debug records
//     are dropped.
//   - with --json, a record is a JSON line on stderr beside the status
//     lines: {"message_type":"log","level":"info","msg":...,"time":...}
//     followed by its attributes.

// logger returns the logger for a command's log lines: human lines on w (a
// reporter's logWriter, so that they do not run into a progress bar), or
// with --json JSON lines on stderr.
func (a *app) logger(w io.Writer) *slog.Logger {
	if a.json {
		return slog.New(&lineHandler{out: &lockedOut{w: a.stderr}, json: true})
	}
	return slog.New(&lineHandler{out: &lockedOut{w: w}})
}

// lockedOut serialises whole lines from the goroutines that log.
type lockedOut struct {
	mu sync.Mutex
	w  io.Writer
}

func (o *lockedOut) writeLine(b []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.w.Write(b) // a log line that cannot be written is not worth failing the command
}

// lineHandler is the slog.Handler of logger.
type lineHandler struct {
	out    *lockedOut
	json   bool
	attrs  []slog.Attr // from WithAttrs, group prefixes applied
	prefix string      // from WithGroup: "group."
}

func (h *lineHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *lineHandler) Handle(_ context.Context, r slog.Record) error {
	if !h.json {
		line := r.Message
		switch {
		case r.Level >= slog.LevelError:
			line = "error: " + line
		case r.Level >= slog.LevelWarn:
			line = "warning: " + line
		}
		if !strings.HasSuffix(line, "\n") {
			line += "\n"
		}
		h.out.writeLine([]byte(line))
		return nil
	}
	m := map[string]any{"message_type": "log", "level": strings.ToLower(r.Level.String()), "msg": r.Message}
	if !r.Time.IsZero() {
		m["time"] = r.Time.Format(time.RFC3339Nano)
	}
	for _, a := range h.attrs {
		addAttr(m, "", a)
	}
	r.Attrs(func(a slog.Attr) bool {
		addAttr(m, h.prefix, a)
		return true
	})
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("log line: %w", err)
	}
	h.out.writeLine(append(b, '\n'))
	return nil
}

// addAttr adds a to m under prefix+key, groups flattened as "group.key".
func addAttr(m map[string]any, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range v.Group() {
			addAttr(m, p, g)
		}
		return
	}
	if a.Key == "" {
		return
	}
	switch v.Kind() {
	case slog.KindDuration:
		m[prefix+a.Key] = v.Duration().Seconds()
	case slog.KindTime:
		m[prefix+a.Key] = v.Time().Format(time.RFC3339Nano)
	default:
		if err, ok := v.Any().(error); ok {
			m[prefix+a.Key] = err.Error()
		} else {
			m[prefix+a.Key] = v.Any()
		}
	}
}

func (h *lineHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append([]slog.Attr{}, h.attrs...)
	for _, a := range as {
		c.attrs = append(c.attrs, slog.Attr{Key: h.prefix + a.Key, Value: a.Value})
	}
	return &c
}

func (h *lineHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.prefix = h.prefix + name + "."
	return &c
}
