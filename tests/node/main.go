// Command node runs the parts of a Kubernetes node that the test cluster
// needs, from the same k8s.io/kubernetes release as tests/control-plane:
//
//	node kubelet …         the kubelet (k8s.io/kubernetes/cmd/kubelet)
//	node kube-proxy …      kube-proxy (k8s.io/kubernetes/cmd/kube-proxy)
//	node kube-scheduler …  kube-scheduler (k8s.io/kubernetes/cmd/kube-scheduler)
//	node cri-cleanup …     removes every pod sandbox from the container runtime
//	node sandbox-image …   writes the sandbox (pause) image as an OCI tarball
//
// One binary with subcommands, so the three share one build and one link.
// The flags after the subcommand are the upstream component's own;
// scripts/node.sh sets them.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: node kubelet|kube-proxy|kube-scheduler|cri-cleanup|sandbox-image [flags]")
		os.Exit(2)
	}
	var command *cobra.Command
	switch os.Args[1] {
	case "cri-cleanup", "sandbox-image":
		run := map[string]func([]string) error{"cri-cleanup": criCleanup, "sandbox-image": sandboxImage}[os.Args[1]]
		if err := run(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "node %s: %v\n", os.Args[1], err)
			os.Exit(1)
		}
		return
	case "kubelet":
		command = kubelet.NewKubeletCommand(context.Background())
	case "kube-proxy":
		command = proxy.NewProxyCommand()
	case "kube-scheduler":
		command = scheduler.NewSchedulerCommand()
	default:
		fmt.Fprintf(os.Stderr, "node: unknown component %q (kubelet, kube-proxy, kube-scheduler, cri-cleanup or sandbox-image)\n", os.Args[1])
		os.Exit(2)
	}
	command.SetArgs(os.Args[2:])
	os.Exit(cli.Run(command))
}
