//go:build tools

// Package tools pins the linters this module runs.
package tools

import (
	_ "github.com/rhysd/actionlint/cmd/actionlint"
)
