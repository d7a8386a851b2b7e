// Command pause is the test node's sandbox ("pause") image: the process that
// holds a pod's namespaces. It sleeps until SIGTERM or SIGINT and reaps any
// child that the shared PID namespace hands to it, like the upstream pause.
// Built static (CGO_ENABLED=0) so the image is this one file.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
