//go:build tools

// Package tools pins the Kubernetes control-plane commands that hack/cluster
// builds: importing them here keeps go.mod and go.sum honest.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
