// Umbrella for dmoe's async layer: the io_uring coroutine runtime.
#pragma once

#include <dmoe/async/async_event.hpp>
#include <dmoe/async/async_semaphore.hpp>
#include <dmoe/async/channel.hpp>
#include <dmoe/async/endpoint.hpp>
#include <dmoe/async/io_context.hpp>
#include <dmoe/async/io_operation.hpp>
#include <dmoe/async/sync_wait.hpp>
#include <dmoe/async/task.hpp>
#include <dmoe/async/task_group.hpp>
#include <dmoe/async/tcp_listener.hpp>
#include <dmoe/async/tcp_socket.hpp>
#include <dmoe/async/timer.hpp>
#include <dmoe/async/udp_socket.hpp>
#include <dmoe/async/when_all.hpp>
#include <dmoe/async/when_any.hpp>
#include <dmoe/async/with_stop_token.hpp>
#include <dmoe/async/with_timeout.hpp>
