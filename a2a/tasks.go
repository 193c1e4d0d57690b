package a2a

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	spec "github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2asrv"
	"github.com/a2aproject/a2a-go/v2/a2asrv/taskstore"

	"github.com/sag-gateway/sag/store"
)

// TaskStore keeps tasks. *store.DB implements it.
type TaskStore interface {
	PutA2ATask(ctx context.Context, t store.A2ATask) error
	UpdateA2ATask(ctx context.Context, t store.A2ATask, prev int64) error
	GetA2ATask(ctx context.Context, id string) (store.A2ATask, error)
	ListA2ATasks(ctx context.Context, q store.A2ATaskQuery) ([]store.A2ATask, int, error)
	BindA2ATask(ctx context.Context, id string, nodes []string) error
	LiveA2ATasks(ctx context.Context) ([]store.A2ATask, error)
}

var _ TaskStore = (*store.DB)(nil)

// tasks is the SDK's task store over TaskStore. A task belongs to the
// principal that created it: another principal's task is not found (A2A
// §3.3.2 masks ownership as TaskNotFoundError), and lists hold only the
// caller's own.
type tasks struct {
	st  TaskStore
	now func() time.Time
}

var _ taskstore.Store = tasks{}

// owner is the principal of the call being served.
func owner(ctx context.Context) (string, error) {
	if cc, ok := a2asrv.CallContextFrom(ctx); ok && cc.User != nil && cc.User.Authenticated && cc.User.Name != "" {
		return cc.User.Name, nil
	}
	return "", spec.ErrUnauthenticated
}

// record is the stored form of t.
func (ts tasks) record(own string, t *spec.Task, version int64) (store.A2ATask, error) {
	b, err := json.Marshal(t)
	if err != nil {
		return store.A2ATask{}, fmt.Errorf("encode task: %w", err)
	}
	r := store.A2ATask{ID: string(t.ID), Owner: own, ContextID: t.ContextID, State: string(t.Status.State), Version: version, Updated: ts.now(), Task: b}
	if t.Status.Timestamp != nil {
		r.StatusTime = *t.Status.Timestamp
	}
	return r, nil
}

func (ts tasks) Create(ctx context.Context, t *spec.Task) (taskstore.TaskVersion, error) {
	own, err := owner(ctx)
	if err != nil {
		return taskstore.TaskVersionMissing, err
	}
	r, err := ts.record(own, t, 1)
	if err != nil {
		return taskstore.TaskVersionMissing, err
	}
	if err := ts.st.PutA2ATask(ctx, r); errors.Is(err, store.ErrConflict) {
		return taskstore.TaskVersionMissing, taskstore.ErrTaskAlreadyExists
	} else if err != nil {
		return taskstore.TaskVersionMissing, err
	}
	return 1, nil
}

func (ts tasks) Update(ctx context.Context, u *taskstore.UpdateRequest) (taskstore.TaskVersion, error) {
	own, err := owner(ctx)
	if err != nil {
		return taskstore.TaskVersionMissing, err
	}
	prev := int64(u.PrevVersion)
	if prev == 0 {
		cur, err := ts.st.GetA2ATask(ctx, string(u.Task.ID))
		if err != nil || cur.Owner != own {
			return taskstore.TaskVersionMissing, spec.ErrTaskNotFound
		}
		prev = cur.Version
	}
	r, err := ts.record(own, u.Task, prev+1)
	if err != nil {
		return taskstore.TaskVersionMissing, err
	}
	switch err := ts.st.UpdateA2ATask(ctx, r, prev); {
	case errors.Is(err, store.ErrNotFound):
		return taskstore.TaskVersionMissing, spec.ErrTaskNotFound
	case errors.Is(err, store.ErrConflict):
		return taskstore.TaskVersionMissing, taskstore.ErrConcurrentModification
	case err != nil:
		return taskstore.TaskVersionMissing, err
	}
	return taskstore.TaskVersion(r.Version), nil
}

func (ts tasks) Get(ctx context.Context, id spec.TaskID) (*taskstore.StoredTask, error) {
	own, err := owner(ctx)
	if err != nil {
		return nil, err
	}
	r, err := ts.st.GetA2ATask(ctx, string(id))
	if errors.Is(err, store.ErrNotFound) || (err == nil && r.Owner != own) {
		return nil, spec.ErrTaskNotFound
	}
	if err != nil {
		return nil, err
	}
	t, err := decodeTask(r.Task)
	if err != nil {
		return nil, err
	}
	return &taskstore.StoredTask{Task: t, Version: taskstore.TaskVersion(r.Version), User: r.Owner}, nil
}

// Page sizes of ListTasks (A2A §3.1.4: 1 to 100, default 50) and the
// history a listed task keeps unless asked otherwise.
const (
	defaultPageSize   = 50
	maxPageSize       = 100
	listHistoryLength = 100
)

func (ts tasks) List(ctx context.Context, req *spec.ListTasksRequest) (*spec.ListTasksResponse, error) {
	own, err := owner(ctx)
	if err != nil {
		return nil, err
	}
	size := req.PageSize
	switch {
	case size == 0:
		size = defaultPageSize
	case size < 1 || size > maxPageSize:
		return nil, fmt.Errorf("%w: pageSize must be 1 to %d, got %d", spec.ErrInvalidParams, maxPageSize, size)
	}
	q := store.A2ATaskQuery{Owner: own, ContextID: req.ContextID, Limit: size}
	switch req.Status {
	case spec.TaskStateUnspecified:
	case spec.TaskStateSubmitted, spec.TaskStateWorking, spec.TaskStateInputRequired, spec.TaskStateAuthRequired,
		spec.TaskStateCompleted, spec.TaskStateFailed, spec.TaskStateCanceled, spec.TaskStateRejected:
		q.State = string(req.Status)
	default:
		return nil, fmt.Errorf("%w: status %q is not a task state", spec.ErrInvalidParams, req.Status)
	}
	if req.StatusTimestampAfter != nil {
		q.After = *req.StatusTimestampAfter
	}
	if req.PageToken != "" {
		if q.CursorUpdated, q.CursorID, err = decodePageToken(req.PageToken); err != nil {
			return nil, err
		}
	}
	page, total, err := ts.st.ListA2ATasks(ctx, q)
	if err != nil {
		return nil, err
	}
	res := &spec.ListTasksResponse{Tasks: []*spec.Task{}, TotalSize: total, PageSize: size}
	for _, r := range page {
		t, err := decodeTask(r.Task)
		if err != nil {
			return nil, err
		}
		history := listHistoryLength
		if req.HistoryLength != nil {
			history = *req.HistoryLength
		}
		if history >= 0 && len(t.History) > history {
			t.History = t.History[len(t.History)-history:]
		}
		if !req.IncludeArtifacts {
			t.Artifacts = nil
		}
		res.Tasks = append(res.Tasks, t)
	}
	if len(page) == size {
		last := page[len(page)-1]
		res.NextPageToken = encodePageToken(last.Updated, last.ID)
	}
	return res, nil
}

func decodeTask(b []byte) (*spec.Task, error) {
	var t spec.Task
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("decode stored task: %w", err)
	}
	return &t, nil
}

// A page token is where the previous page ended: its last task's update
// time and id.
func encodePageToken(updated time.Time, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(updated.UnixNano(), 10) + "_" + id))
}

func decodePageToken(tok string) (time.Time, string, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err == nil {
		if ns, id, ok := strings.Cut(string(b), "_"); ok && id != "" {
			if n, err := strconv.ParseInt(ns, 10, 64); err == nil {
				return time.Unix(0, n).UTC(), id, nil
			}
		}
	}
	return time.Time{}, "", fmt.Errorf("%w: pageToken is not one this server issued", spec.ErrInvalidParams)
}
