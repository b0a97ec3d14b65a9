//go:build tools

// Package kopiatool only records the kopia dependency (see go.mod).
package kopiatool

import _ "github.com/kopia/kopia"
