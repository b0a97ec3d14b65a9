package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/stasisbackup/stasis/repo"
	"golang.org/x/term"
)

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func writeJSONLine(w io.Writer, v any) {
	b, _ := json.Marshal(v)
	fmt.Fprintf(w, "%s\n", b)
}

// isTerminal reports whether w is a terminal (progress lines go there only).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func humanDuration(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%dms", d.Milliseconds())
	}
	return d.Round(100 * time.Millisecond).String()
}

// printProblems lists files that were not captured or restored cleanly.
func printProblems(w io.Writer, what string, ps []repo.Problem) {
	if len(ps) == 0 {
		return
	}
	fmt.Fprintf(w, "%d %s:\n", len(ps), what)
	for _, p := range ps {
		fmt.Fprintf(w, "  %-10s %s: %s\n", p.Kind, quotePath(p.Path), p.Error)
	}
}

// quotePath shows a path as is unless it holds control characters or
// invalid UTF-8, which are escaped Go-style.
func quotePath(p string) string {
	for _, r := range p {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return fmt.Sprintf("%q", p)
		}
	}
	if !strings.ContainsRune(p, '\uFFFD') && !isValidUTF8(p) {
		return fmt.Sprintf("%q", p)
	}
	return p
}

func isValidUTF8(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }
