package engine

import "log/slog"

// orDiscard returns l, or a logger that discards every record when l is
// nil: the Log of an engine's options may be left unset.
func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
