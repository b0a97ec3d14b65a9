package main

import (
	"errors"
	"strings"

	"github.com/stasisbackup/stasis/engine"
	"github.com/stasisbackup/stasis/repo"
)

// The library packages name no command-line flag in their errors: they say
// what went wrong, and the error's type or sentinel says which one it is.
// The hint a user of this command line needs (the flag to give, the command
// to run) is added here, right after the text of the library error it
// belongs to, so that the line printed reads as one sentence.

// A hint finds the library error it belongs to in err's chain. It returns
// the text of that error as err's message holds it (after) and the hint to
// insert after it; ok is false when err holds no such error.
type hint func(err error) (after, text string, ok bool)

// hints are the CLI's hints, each for one library error.
var hints = []hint{
	func(err error) (string, string, bool) {
		var e *engine.CopySourceError
		if !errors.As(err, &e) {
			return "", "", false
		}
		return e.Error(), " (run `stasis check --read-data` on " + e.Source + ")", true
	},
	func(err error) (string, string, bool) {
		if !errors.Is(err, engine.ErrNoKeepRule) {
			return "", "", false
		}
		return engine.ErrNoKeepRule.Error(), "; pass at least one --keep-* flag", true
	},
	func(err error) (string, string, bool) {
		if !errors.Is(err, engine.ErrTargetNotEmpty) {
			return "", "", false
		}
		return engine.ErrTargetNotEmpty.Error(), " (choose an empty directory, or give --overwrite to replace files in it)", true
	},
	func(err error) (string, string, bool) {
		var e *repo.RepackError
		if !errors.As(err, &e) {
			return "", "", false
		}
		if e.Blob {
			return e.Error(), " (run `stasis check --read-data`, then `stasis repair`)", true
		}
		return e.Error(), " (run `stasis check --read-data`)", true
	},
	func(err error) (string, string, bool) {
		if !errors.Is(err, repo.ErrInitNoPassword) {
			return "", "", false
		}
		return repo.ErrInitNoPassword.Error(), " (or create an unencrypted repository on purpose with --insecure-no-password)", true
	},
	func(err error) (string, string, bool) {
		var e *repo.NoRepositoryError
		if !errors.As(err, &e) {
			return "", "", false
		}
		return e.Error(), " (create one with `stasis init --repo " + e.Location + "`)", true
	},
	func(err error) (string, string, bool) {
		var e *repo.CacheDirError
		if !errors.As(err, &e) {
			return "", "", false
		}
		if e.Dir == "" {
			return "find a cache directory", " (set --cache-dir or STASIS_CACHE_DIR)", true
		}
		return e.Error(), " (choose another with --cache-dir or STASIS_CACHE_DIR)", true
	},
}

// withHints returns err with the hints of the library errors it holds
// inserted into its message; it still matches what err matches. nil stays
// nil.
func withHints(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	for _, h := range hints {
		after, text, ok := h(err)
		if !ok {
			continue
		}
		if i := strings.Index(msg, after); i >= 0 {
			i += len(after)
			msg = msg[:i] + text + msg[i:]
		}
	}
	if msg == err.Error() {
		return err
	}
	return hintedError{msg: msg, err: err}
}

// hintedError is an error whose message has the CLI's hints.
type hintedError struct {
	msg string
	err error
}

func (e hintedError) Error() string { return e.msg }
func (e hintedError) Unwrap() error { return e.err }
