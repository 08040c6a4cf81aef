// Command etcd is etcd's own entry point, built from go.etcd.io/etcd/server/v3
// at the version Kubernetes pins (etcd's root module is not what Kubernetes
// requires, so we call etcdmain the way etcd's main.go does).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
