//go:build tools

// Package tools pins the SeaweedFS command for `go build`.
package tools

import _ "github.com/seaweedfs/seaweedfs/weed"
