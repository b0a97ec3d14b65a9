package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestLoggerLines(t *testing.T) {
	var human, stderr bytes.Buffer
	a := &app{stderr: &stderr}
	l := a.logger(&human)
	l.Debug("not shown")
	l.Info("prune: 3 packs repacked", "packs", 3)
	l.Warn("pack abc is damaged", "pack", "abc")
	l.Error("cannot read pack abc", "err", errors.New("EIO"))
	want := "prune: 3 packs repacked\nwarning: pack abc is damaged\nerror: cannot read pack abc\n"
	if human.String() != want || stderr.Len() != 0 {
		t.Fatalf("human lines %q (stderr %q), want %q", human.String(), stderr.String(), want)
	}

	a.json = true
	human.Reset()
	l = a.logger(&human).With("command", "prune").WithGroup("pack")
	l.Info("repacked", "count", 3, "took", 1500*time.Millisecond)
	l.Warn("damaged", "err", errors.New("EIO"))
	if human.Len() != 0 {
		t.Fatalf("--json wrote human lines: %q", human.String())
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("--json log lines: %q", stderr.String())
	}
	var first, second map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &second); err != nil {
		t.Fatal(err)
	}
	if first["message_type"] != "log" || first["level"] != "info" || first["msg"] != "repacked" ||
		first["command"] != "prune" || first["pack.count"] != 3.0 || first["pack.took"] != 1.5 || first["time"] == nil {
		t.Fatalf("first line %v", first)
	}
	if second["level"] != "warn" || second["pack.err"] != "EIO" {
		t.Fatalf("second line %v", second)
	}
}
