//go:build tools

// Package tools pins the CNCF Distribution registry: the tests push images to
// a real OCI registry (TLS, htpasswd auth) on 127.0.0.1 instead of a fake.
package tools

import (
	_ "github.com/distribution/distribution/v3/cmd/registry"
)
