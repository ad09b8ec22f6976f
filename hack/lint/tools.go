//go:build tools

// Package lint pins golangci-lint, which `make lint` runs on the whole tree.
// It is a module of its own so that golangci-lint's many dependencies touch
// neither the project's go.mod nor the other tools'.
package lint

import (
	_ "github.com/golangci/golangci-lint/v2/cmd/golangci-lint"
)
