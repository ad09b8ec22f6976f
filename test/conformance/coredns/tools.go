//go:build tools

// Package tools pins CoreDNS, the one command this module builds.
package tools

import _ "github.com/coredns/coredns"
