package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// criCleanup stops and removes every pod sandbox the container runtime at
// the endpoint knows, the way the kubelet would: the runtime kills the
// containers and calls CNI DEL, which removes the pod's veth and releases its
// address. scripts/node.sh runs it after stopping the kubelet, so that no
// container, network namespace or veth outlives the test node.
func criCleanup(args []string) error {
	flags := flag.NewFlagSet("cri-cleanup", flag.ContinueOnError)
	endpoint := flags.String("endpoint", "", "CRI socket, unix:///…/containerd.sock (required)")
	timeout := flags.Duration("timeout", 60*time.Second, "overall time limit")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *endpoint == "" {
		return errors.New("--endpoint is required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	conn, err := grpc.NewClient(*endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	runtime := runtimeapi.NewRuntimeServiceClient(conn)
	pods, err := runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("list pod sandboxes: %w", err)
	}
	var failed []error
	for _, pod := range pods.Items {
		name := pod.Metadata.Namespace + "/" + pod.Metadata.Name
		if _, err := runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.Id}); err != nil {
			failed = append(failed, fmt.Errorf("stop %s: %w", name, err))
			continue
		}
		if _, err := runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.Id}); err != nil {
			failed = append(failed, fmt.Errorf("remove %s: %w", name, err))
		}
	}
	return errors.Join(failed...)
}
