package engine

import (
	"context"
	"io"
	"log/slog"
)

// orDiscard returns l, or a logger that discards every record when l is
// nil: the Log of an engine's options may be left unset.
func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// LineLogger returns a logger that writes the message of each record of
// level Info and above to w as one line ("warning: " before a warning's,
// "error: " before an error's, as the CLI does), without its attributes; a
// nil w discards. It serves a caller that still logs to an io.Writer.
func LineLogger(w io.Writer) *slog.Logger {
	if w == nil {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(lineHandler{w: w})
}

// lineHandler is the slog.Handler of LineLogger.
type lineHandler struct{ w io.Writer }

func (lineHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h lineHandler) Handle(_ context.Context, r slog.Record) error {
	line := r.Message
	switch {
	case r.Level >= slog.LevelError:
		line = "error: " + line
	case r.Level >= slog.LevelWarn:
		line = "warning: " + line
	}
	_, err := io.WriteString(h.w, line+"\n")
	return err
}

func (h lineHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h lineHandler) WithGroup(string) slog.Handler      { return h }
