package engine

import (
	"errors"
	"fmt"
	"runtime/debug"
)

// PanicError is a panic in one of the goroutines of a backup (or restore),
// turned into an error so that the caller can clean up — above all run the
// resume hook of a quiesced service — instead of the whole process dying.
type PanicError struct {
	Where string // what the goroutine was doing
	Value any    // what was passed to panic
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("internal error: panic in %s: %v (a bug in stasis: please report it with this stack)\n%s", e.Where, e.Value, e.Stack)
}

// recoverTo turns a panic of the calling goroutine into *err. It must be
// deferred directly: `defer recoverTo(&err, "saving chunks")`.
func recoverTo(err *error, where string) {
	if r := recover(); r != nil {
		*err = &PanicError{Where: where, Value: r, Stack: debug.Stack()}
	}
}

// recoverCancel, deferred directly in a goroutine that returns no error,
// turns its panic into the cause that cancels the backup.
func (b *backup) recoverCancel(where string) {
	if r := recover(); r != nil {
		b.cancel(&PanicError{Where: where, Value: r, Stack: debug.Stack()})
	}
}

func isPanic(err error) bool { var p *PanicError; return errors.As(err, &p) }
