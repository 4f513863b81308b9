//! The server's processes and streams on the host: stdio, exit codes,
//! waits, stream hellos and expiry, terminals, stdin, large output.

use super::*;

#[test]
fn echo_writes_to_its_stdout_stream() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut out = guest.stream(1).await;
        let mut echo = request(&["echo", "hello"]);
        echo.stdout = Some(1);
        let process = client.exec(echo).await;
        assert_eq!(read_all(&mut out).await, b"hello\n");
        assert_eq!(client.wait(process).await, ExitStatus::Code(0));
    });
}

#[test]
fn stdin_stderr_env_and_cwd_reach_the_process() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut input = guest.stream(10).await;
        let mut out = guest.stream(11).await;
        let mut err = guest.stream(12).await;
        let mut sh = request(&["sh", "-c", "cat; echo \"$GREETING $(pwd)\" >&2"]);
        sh.env.push("GREETING=hi".into());
        sh.cwd = Some("/tmp".into());
        (sh.stdin, sh.stdout, sh.stderr) = (Some(10), Some(11), Some(12));
        let process = client.exec(sh).await;
        input.write_all(b"through cat").await.unwrap();
        input.shutdown().await.unwrap();
        assert_eq!(read_all(&mut out).await, b"through cat");
        assert_eq!(read_all(&mut err).await, b"hi /tmp\n");
        assert_eq!(client.wait(process).await, ExitStatus::Code(0));
    });
}

#[test]
fn exit_codes_signals_and_exec_failures() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let exit3 = client.exec(request(&["sh", "-c", "exit 3"])).await;
        assert_eq!(client.wait(exit3).await, ExitStatus::Code(3));
        // Waited for: gone.
        assert_eq!(
            kind(client.call(RequestBody::Wait { process: exit3 }).await),
            ErrorKind::NotFound
        );

        let sleeper = client.exec(request(&["sleep", "100"])).await;
        for bad in [0, 65, -1] {
            let signal = RequestBody::Signal {
                process: sleeper,
                signal: bad,
            };
            assert_eq!(kind(client.call(signal).await), ErrorKind::InvalidRequest);
        }
        let kill = RequestBody::Signal {
            process: sleeper,
            signal: 9,
        };
        assert_eq!(client.call(kill).await, Ok(ResponseBody::Done));
        assert_eq!(client.wait(sleeper).await, ExitStatus::Signal(9));
        let unknown = RequestBody::Signal {
            process: 999,
            signal: 9,
        };
        assert_eq!(kind(client.call(unknown).await), ErrorKind::NotFound);

        let missing = client
            .call(RequestBody::Exec(request(&["/no/such/program"])))
            .await;
        match missing {
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::System);
                assert!(e.message.contains("/no/such/program"), "{}", e.message);
            }
            other => panic!("exec of a missing program: {other:?}"),
        }
        let not_executable = client
            .call(RequestBody::Exec(request(&["/etc/passwd"])))
            .await;
        assert_eq!(kind(not_executable), ErrorKind::System);
        let empty = client.call(RequestBody::Exec(request(&[]))).await;
        assert_eq!(kind(empty), ErrorKind::InvalidRequest);
        let nul = client.call(RequestBody::Exec(request(&["ec\0ho"]))).await;
        assert_eq!(kind(nul), ErrorKind::InvalidRequest);
        // Failed execs leave nothing behind.
        assert!(client.list().await.is_empty());
    });
}

#[test]
fn a_wait_does_not_hold_up_other_requests() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let sleeper = client.exec(request(&["sleep", "100"])).await;
        let wait = client.send(RequestBody::Wait { process: sleeper }).await;
        let version = client.send(RequestBody::Version).await;
        assert_eq!(client.recv().await.id, version);
        let kill = client
            .send(RequestBody::Signal {
                process: sleeper,
                signal: 15,
            })
            .await;
        let mut answers = [client.recv().await, client.recv().await];
        answers.sort_by_key(|r| r.id);
        assert_eq!(answers[0].id, wait);
        assert_eq!(
            answers[0].result,
            Ok(ResponseBody::Exited {
                process: sleeper,
                status: ExitStatus::Signal(15)
            })
        );
        assert_eq!(answers[1].id, kill);
    });
}

#[test]
fn exited_processes_are_listed_until_waited_for() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let quick = client.exec(request(&["true"])).await;
        let sleeper = client.exec(request(&["sleep", "100"])).await;
        assert_eq!(client.until_exited(quick).await, ExitStatus::Code(0));
        let signal = RequestBody::Signal {
            process: quick,
            signal: 9,
        };
        assert_eq!(kind(client.call(signal).await), ErrorKind::NotFound);
        let list = client.list().await;
        let info = list.iter().find(|p| p.process == sleeper).unwrap();
        assert_eq!(info.argv, vec!["sleep", "100"]);
        assert_eq!(info.exited, None);
        assert_eq!(client.wait(quick).await, ExitStatus::Code(0));
        assert!(client.list().await.iter().all(|p| p.process != quick));
        let kill = RequestBody::Signal {
            process: sleeper,
            signal: 9,
        };
        client.call(kill).await.unwrap();
        client.wait(sleeper).await;
    });
}

#[test]
fn an_exec_waits_briefly_for_its_streams() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut echo = request(&["echo", "late"]);
        echo.stdout = Some(20);
        let id = client.send(RequestBody::Exec(echo)).await;
        sleep(Duration::from_millis(50)).await;
        let mut out = guest.stream(20).await;
        let response = client.recv().await;
        assert_eq!(response.id, id);
        let Ok(ResponseBody::Started { process, .. }) = response.result else {
            panic!("exec failed: {:?}", response.result)
        };
        assert_eq!(read_all(&mut out).await, b"late\n");
        client.wait(process).await;

        // A stream that never comes fails the exec; the streams that did
        // come stay parked for another try.
        let _present = guest.stream(31).await;
        let mut missing = request(&["true"]);
        (missing.stdout, missing.stderr) = (Some(31), Some(30));
        let started = Instant::now();
        let result = client.call(RequestBody::Exec(missing)).await;
        match result {
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::NotFound);
                assert!(e.message.contains("30"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(250));
        let mut again = request(&["true"]);
        again.stdout = Some(31);
        let process = client.exec(again).await;
        client.wait(process).await;
    });
}

#[test]
fn bad_hellos_and_duplicate_tokens_are_refused() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut junk = UnixStream::connect(guest.dir.join("stream")).await.unwrap();
        junk.write_all(b"HELLO 1\n").await.unwrap();
        assert!(closed_by_agent(&mut junk).await);
        let mut long = UnixStream::connect(guest.dir.join("stream")).await.unwrap();
        long.write_all(&[b'7'; 64]).await.unwrap();
        assert!(closed_by_agent(&mut long).await);
        let mut silent = UnixStream::connect(guest.dir.join("stream")).await.unwrap();
        let started = Instant::now();
        assert!(closed_by_agent(&mut silent).await);
        assert!(started.elapsed() >= Duration::from_millis(900));

        let mut first = guest.stream(40).await;
        let mut second = guest.stream(40).await;
        assert!(closed_by_agent(&mut second).await);
        let mut echo = request(&["echo", "first"]);
        echo.stdout = Some(40);
        let process = client.exec(echo).await;
        assert_eq!(read_all(&mut first).await, b"first\n");
        client.wait(process).await;
    });
}

#[test]
fn unclaimed_streams_expire() {
    run(async {
        let guest = Guest::start(Limits {
            parked_ttl: Duration::from_millis(200),
            ..limits()
        });
        let mut client = guest.control().await;
        let mut stream = guest.stream(50).await;
        assert!(closed_by_agent(&mut stream).await);
        let mut echo = request(&["true"]);
        echo.stdout = Some(50);
        let result = client.call(RequestBody::Exec(echo)).await;
        assert_eq!(kind(result), ErrorKind::NotFound);
    });
}

#[test]
fn garbage_is_answered_and_other_clients_carry_on() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let frame = |body: &[u8]| {
            let mut f = (body.len() as u32).to_be_bytes().to_vec();
            f.extend_from_slice(body);
            f
        };
        client
            .conn
            .write_all(&frame(br#"{"id":5,"body":{"op":"frobnicate"}}"#))
            .await
            .unwrap();
        let answer = client.recv().await;
        assert_eq!(answer.id, 5);
        assert_eq!(kind(answer.result), ErrorKind::InvalidRequest);
        client.conn.write_all(&frame(b"{oops")).await.unwrap();
        let answer = client.recv().await;
        assert_eq!(answer.id, 0);
        assert_eq!(kind(answer.result), ErrorKind::InvalidRequest);
        assert!(client.call(RequestBody::Version).await.is_ok());

        let mut huge = guest.control().await;
        huge.conn.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let answer = huge.recv().await;
        assert_eq!(
            (answer.id, kind(answer.result)),
            (0, ErrorKind::InvalidRequest)
        );
        let mut byte = [0u8; 1];
        assert_eq!(huge.conn.read(&mut byte).await.unwrap(), 0);

        assert!(client.call(RequestBody::Version).await.is_ok());
        let mut third = guest.control().await;
        assert!(third.call(RequestBody::Version).await.is_ok());
    });
}

#[test]
fn a_terminal_process_has_a_controlling_pty() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut terminal = guest.stream(60).await;
        let mut sh = request(&[
            "sh",
            "-c",
            "test -t 0 && test -t 1 && test -t 2 && echo tty; read line; \
             stty size; echo \"got $line\"",
        ]);
        sh.terminal = true;
        sh.stdin = Some(60);
        let process = client.exec(sh).await;
        let resize = RequestBody::ResizeTerminal {
            process,
            rows: 24,
            columns: 80,
        };
        assert_eq!(client.call(resize).await, Ok(ResponseBody::Done));
        terminal.write_all(b"go\n").await.unwrap();
        let output = String::from_utf8_lossy(&read_all(&mut terminal).await).into_owned();
        assert!(output.contains("tty\r\n"), "{output:?}");
        assert!(output.contains("24 80\r\n"), "{output:?}");
        assert!(output.contains("got go\r\n"), "{output:?}");
        client.wait(process).await;

        let plain = client.exec(request(&["sleep", "100"])).await;
        let resize = RequestBody::ResizeTerminal {
            process: plain,
            rows: 1,
            columns: 1,
        };
        assert_eq!(kind(client.call(resize).await), ErrorKind::InvalidRequest);
        let kill = RequestBody::Signal {
            process: plain,
            signal: 9,
        };
        client.call(kill).await.unwrap();
        client.wait(plain).await;
    });
}

#[test]
fn close_stdin_ends_the_input() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let _input = guest.stream(70).await;
        let mut out = guest.stream(71).await;
        let mut cat = request(&["cat"]);
        (cat.stdin, cat.stdout) = (Some(70), Some(71));
        let process = client.exec(cat).await;
        let close = RequestBody::CloseStdin { process };
        assert_eq!(client.call(close.clone()).await, Ok(ResponseBody::Done));
        assert_eq!(read_all(&mut out).await, b"");
        assert_eq!(client.call(close).await, Ok(ResponseBody::Done));
        assert_eq!(client.wait(process).await, ExitStatus::Code(0));
    });
}

#[test]
fn a_host_that_hangs_up_stdout_gives_the_process_sigpipe() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut out = guest.stream(80).await;
        let mut yes = request(&["yes"]);
        yes.stdout = Some(80);
        let process = client.exec(yes).await;
        let mut some = [0u8; 4096];
        out.read_exact(&mut some).await.unwrap();
        assert!(some.starts_with(b"y\ny\n"));
        drop(out);
        assert_eq!(
            client.wait(process).await,
            ExitStatus::Signal(libc::SIGPIPE)
        );
    });
}

#[test]
fn megabytes_come_through_byte_exact() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut out = guest.stream(90).await;
        let mut seq = request(&["seq", "1", "1000000"]);
        seq.stdout = Some(90);
        let process = client.exec(seq).await;
        let got = read_all(&mut out).await;
        let mut expected = String::new();
        for i in 1..=1_000_000 {
            expected.push_str(&i.to_string());
            expected.push('\n');
        }
        assert_eq!(got.len(), expected.len());
        assert!(got == expected.as_bytes());
        assert_eq!(client.wait(process).await, ExitStatus::Code(0));
    });
}
