"The run's infrastructure in `whale_kernel.core`: one run per output folder, and each stage's time and peak memory"
import os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pytest
from whale_kernel.core import hold, BusyError, StageLog, peak_rss

HOLDER = 'import sys, time; from whale_kernel.core import hold\nwith hold(sys.argv[1]):\n    print("held", flush=True); time.sleep(120)\n'

def test_a_held_folder_refuses_a_second_run_and_a_dead_holder_is_taken_over(tmp_path, wklog):
    p = subprocess.Popen([sys.executable, '-c', HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == 'held'
        with pytest.raises(BusyError, match=rf'another run \(pid {p.pid}\) is writing to this folder') as e:
            with hold(tmp_path): pass
        assert '\n' not in str(e.value) and e.value._render_traceback_() == [f'BusyError: {e.value}']   # one line in Jupyter too
    finally: p.send_signal(signal.SIGKILL); p.wait()
    with hold(tmp_path) as fn:                          # killed: its lock went with it, and it is taken over with a warning
        assert f'run pid {p.pid} ended without releasing this folder' in wklog.text
        assert fn.read_text().strip() == str(os.getpid())
    wklog.clear()
    with hold(tmp_path): pass                           # released cleanly: no warning next time
    assert 'ended without releasing' not in wklog.text

def test_stage_log_records_time_and_each_stages_own_peak():
    st = StageLog()
    with st('big'): a = np.ones(400_000_000//8); a += 1; del a
    with st('small'): time.sleep(0.05)
    assert set(st.rec) == {'big', 'small'} and st.rec['small']['secs'] >= 0.05
    if peak_rss() is None: pytest.skip('no /proc here')
    assert st.rec['big']['peak_rss_gb'] > st.rec['small']['peak_rss_gb'] + 0.3     # the peak is reset per stage
    assert 'big' in repr(st) and 'GB' in repr(st)
